import unicodedata

import django.db.models.functions.text
from django.db import migrations, models


def rename_duplicates(apps, schema_editor):
    """Names were not unique before: every access ID but the oldest of a name gets its access ID
    appended ("ERP (AK3F9C...)"), so the constraint can be added and nobody's name is lost."""
    AccessId = apps.get_model("accessids", "AccessId")
    seen: set[str] = set()
    for access in AccessId.objects.order_by("created_at", "pk"):
        key = unicodedata.normalize("NFKC", access.name.strip()).casefold()
        if key in seen:
            access.name = f"{access.name[:170]} ({access.key})"
            access.save(update_fields=["name"])
        seen.add(key)


class Migration(migrations.Migration):

    dependencies = [
        ('accessids', '0007_acs_party'),
        ('signing', '0004_card_pools'),
    ]

    operations = [
        migrations.RunPython(rename_duplicates, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name='accessid',
            constraint=models.UniqueConstraint(django.db.models.functions.text.Lower('name'),
                                               name='accessid_name_unique_ci'),
        ),
    ]
