"""Master key rotation over every encrypted column of every app.

`ENCRYPTED_COLUMNS` is the one list of columns that hold a value encrypted under the master
key (core/encryption.py). A system check (`encrypted_columns_check`) fails any `manage.py`
command, the tests included, when a model has a `*_encrypted` field this list does not
name, so a new encrypted field cannot be left out of a rotation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from django.apps import apps
from django.core import checks
from django.db import transaction
from django.utils.translation import gettext, gettext_lazy, pgettext

from accessids.acs import KEY_PURPOSE as ACS_KEY_PURPOSE
from accessids.acs import PRIVATE_KEY_PURPOSE as ACS_PRIVATE_KEY_PURPOSE
from accessids.secrets import SECRET_PURPOSE as APP_SECRET_PURPOSE
from accessids.secrets import AppSecretService
from accessids.services import LEGACY_KEY_PURPOSE, legacy_key_fingerprint
from audit.models import AuditEvent
from audit.services import audit_event_record
from core.encryption import secret_decrypt, secret_encrypt
from core.legacy_cipher import legacy_key_fold
from signing.services import PIN_PURPOSE
from webhooks.models import SECRET_PURPOSE as WEBHOOK_SECRET_PURPOSE
from webhooks.services import enabled_webhooks_invalidate

ENCRYPTED_SUFFIX = "_encrypted"


def _legacy_fingerprint(plain: str, new_key: bytes) -> dict[str, Any]:
    # Keyed with the master key, so it moves with it.
    return {"legacy_key_fingerprint": legacy_key_fingerprint(legacy_key_fold(plain), key=new_key)}


@dataclass(frozen=True)
class EncryptedColumn:
    name: str  # the count's key in the audit event
    label: str  # what the command reports, e.g. "App Secret(s)" (translated when shown)
    model: str  # "app_label.Model"
    field: str
    purpose: str  # bound into the ciphertext (core.encryption)
    derived: Callable[[str, bytes], dict[str, Any]] | None = None  # other columns computed from (clear value, new key)


ENCRYPTED_COLUMNS: tuple[EncryptedColumn, ...] = (
    EncryptedColumn("secrets", gettext_lazy("App Secret(s)"), "accessids.AppSecret", "secret_encrypted",
                    APP_SECRET_PURPOSE),
    EncryptedColumn("pins", gettext_lazy("card PIN(s)"), "signing.CardDevice", "pin_encrypted", PIN_PURPOSE),
    EncryptedColumn("legacy_keys", gettext_lazy("legacy AES key(s)"), "accessids.AccessId", "legacy_aes_key_encrypted",
                    LEGACY_KEY_PURPOSE, derived=_legacy_fingerprint),
    EncryptedColumn("webhook_secrets", gettext_lazy("webhook secret(s)"), "webhooks.Webhook", "secret_encrypted",
                    WEBHOOK_SECRET_PURPOSE),
    EncryptedColumn("acs_keys", gettext_lazy("access system key(s)"), "accessids.AcsParty", "key_encrypted",
                    ACS_KEY_PURPOSE),
    EncryptedColumn("acs_pending_keys", gettext_lazy("pending access system key(s)"), "accessids.AcsParty",
                    "pending_key_encrypted", ACS_KEY_PURPOSE),
    EncryptedColumn("acs_previous_keys", gettext_lazy("previous access system key(s)"), "accessids.AcsParty",
                    "previous_key_encrypted", ACS_KEY_PURPOSE),
    EncryptedColumn("acs_private_keys", gettext_lazy("access system private key(s)"), "accessids.AcsParty",
                    "private_key_encrypted", ACS_PRIVATE_KEY_PURPOSE),
)


def master_key_rotate(*, old_key: bytes, new_key: bytes) -> dict[str, int]:
    """Re-encrypt every value of every column in ENCRYPTED_COLUMNS from `old_key` to
    `new_key`, in one transaction with its audit event: if any value does not decrypt
    (MasterKeyError), nothing changes. Returns the count per column name."""
    counts: dict[str, int] = {}
    with transaction.atomic():
        for column in ENCRYPTED_COLUMNS:
            model = apps.get_model(column.model)
            rows = (model.objects.select_for_update().exclude(**{column.field: ""})
                    .values_list("pk", column.field))
            counts[column.name] = 0
            for pk, stored in rows:
                plain = secret_decrypt(stored, purpose=column.purpose, key=old_key)
                update = {column.field: secret_encrypt(plain, purpose=column.purpose, key=new_key)}
                if column.derived is not None:
                    update.update(column.derived(plain, new_key))
                model.objects.filter(pk=pk).update(**update)
                counts[column.name] += 1
        audit_event_record(event_type=AuditEvent.MASTER_KEY_ROTATED, source="command", details=dict(counts))
        # Now, for the rest of this transaction, and again once the new values are visible to all.
        _caches_forget()
        transaction.on_commit(_caches_forget)
    return counts


def master_key_rotation_summary(counts: dict[str, int]) -> str:
    """"3 App Secret(s), 1 card PIN(s), 0 legacy AES key(s) and 2 webhook secret(s)", in the
    active language."""
    parts = [gettext("%(count)d %(what)s") % {"count": counts.get(column.name, 0), "what": column.label}
             for column in ENCRYPTED_COLUMNS]
    if len(parts) == 1:
        return parts[0]
    return gettext("%(items)s and %(last)s") % {"items": pgettext("list separator", ", ").join(parts[:-1]),
                                                 "last": parts[-1]}


def _caches_forget() -> None:
    """What this process holds decrypted or derived from the old key."""
    for key in apps.get_model("accessids.AccessId").objects.values_list("key", flat=True):
        AppSecretService.invalidate(key)
    enabled_webhooks_invalidate()


def encrypted_columns_check(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Every `*_encrypted` model field is in ENCRYPTED_COLUMNS (and every entry exists)."""
    listed = {(column.model.lower(), column.field) for column in ENCRYPTED_COLUMNS}
    found = set()
    errors = []
    models = ([m for config in app_configs for m in config.get_models()] if app_configs is not None
              else apps.get_models())
    for model in models:
        for field in model._meta.get_fields():
            name = getattr(field, "name", "")
            if not name.endswith(ENCRYPTED_SUFFIX) or getattr(field, "concrete", False) is False:
                continue
            key = (model._meta.label_lower, name)
            found.add(key)
            if key not in listed:
                errors.append(checks.Error(
                    f"{model._meta.label}.{name} holds an encrypted value but is not in ENCRYPTED_COLUMNS, "
                    "so rotate_master_key would leave it unreadable",
                    hint="add it to signplatform/master_key.py ENCRYPTED_COLUMNS", obj=model, id="signplatform.E001",
                ))
    if app_configs is not None:  # a partial check cannot tell that a listed column is missing
        return errors
    for model_label, field in sorted(listed - found):
        errors.append(checks.Error(f"ENCRYPTED_COLUMNS names {model_label}.{field}, which does not exist",
                                   id="signplatform.E002"))
    return errors
