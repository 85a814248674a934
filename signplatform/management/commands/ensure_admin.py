import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _


class Command(BaseCommand):
    help = _(
        "Make sure an administrator account exists. Uses DJANGO_SUPERUSER_USERNAME and "
        "DJANGO_SUPERUSER_PASSWORD when set; otherwise creates 'admin' with a random password "
        "and prints it once."
    )

    def handle(self, *args, **options):
        User = get_user_model()
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "").strip()
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD", "")
        if username and password:
            user, created = User.objects.get_or_create(username=username, defaults={"is_staff": True, "is_superuser": True})
            if created or not user.check_password(password):
                user.set_password(password)
                user.is_staff = user.is_superuser = user.is_active = True
                user.save()
                self.stdout.write((_("Administrator %(username)s created from the environment.") if created
                                   else _("Administrator %(username)s password updated from the environment."))
                                  % {"username": repr(username)})
            return
        if User.objects.filter(is_superuser=True, is_active=True).exists():
            return
        username = username or "admin"
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        bar = "=" * 64
        self.stdout.write(
            f"{bar}\n" + _("Created the administrator account (shown only this once):") + "\n"
            + "  " + _("username: %(username)s") % {"username": username} + "\n"
            + "  " + _("password: %(password)s") % {"password": password} + "\n"
            + _("Change it in the admin, or set DJANGO_SUPERUSER_USERNAME/PASSWORD.") + f"\n{bar}"
        )
