"""`/api/v1/verify/xml` now needs the `verify_xml` scope (granted by default to new access
IDs); every access ID that exists keeps what it could do."""

from django.db import migrations


def grant(apps, schema_editor):
    AccessId = apps.get_model("accessids", "AccessId")
    for access in AccessId.objects.all().only("pk", "scopes"):
        if "verify_xml" not in access.scopes:
            AccessId.objects.filter(pk=access.pk).update(scopes=[*access.scopes, "verify_xml"])


def revoke(apps, schema_editor):
    AccessId = apps.get_model("accessids", "AccessId")
    for access in AccessId.objects.all().only("pk", "scopes"):
        if "verify_xml" in access.scopes:
            AccessId.objects.filter(pk=access.pk).update(scopes=[s for s in access.scopes if s != "verify_xml"])


class Migration(migrations.Migration):
    dependencies = [("accessids", "0003_accessid_legacy_aes_key_encrypted_and_more")]
    operations = [migrations.RunPython(grant, revoke)]
