"""`rows_insert`: INSERT new rows of a model without the ORM's per-value compilation.

`Model.save()` compiles its INSERT anew for every row, which costs several times what the
database spends on it. The request path writes one audit event per request and one XML
document per signed document, so those two insert here: the same columns, each value
adapted by its field as the ORM would (times, addresses, JSON, booleans; text and numbers,
which the callers give as `str`, `int` and `float`, go as they are, without the ORM's `str()`
and `int()`), `auto_now` and `auto_now_add` filled as `pre_save` fills them, the new primary
key read back with `RETURNING` (PostgreSQL, SQLite >= 3.35). Models this cannot write as
`save()` would are refused when first used. No `pre_save`/`post_save` signal is sent: a caller
whose model has receivers sends them itself."""

from __future__ import annotations

from django.db import models
from django.db.models.fields import AutoFieldMixin

# Field classes (exactly these: a subclass may transform its values) whose Python value the
# database takes as it is; the others go through their field's adaptation.
_PLAIN_FIELDS = frozenset({models.CharField, models.TextField, models.IntegerField, models.BigIntegerField,
                           models.SmallIntegerField, models.PositiveIntegerField, models.PositiveBigIntegerField,
                           models.PositiveSmallIntegerField, models.FloatField})
# Variables per statement: at most SQLite's oldest limit (999).
_VARIABLES_MAX = 999


def _auto_time(field: models.Field) -> bool:
    return getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)


def _plain(field: models.Field) -> bool:
    if type(field) is models.ForeignKey:  # its value is the target's key: plain if that is a counter
        return isinstance(field.target_field, AutoFieldMixin)
    return type(field) in _PLAIN_FIELDS


def _writable_check(model: type[models.Model], fields: list[models.Field]) -> None:
    """TypeError for a model whose INSERT `save()` would write differently."""
    problems = []
    if model._meta.parents:
        problems.append("it inherits a table")
    if not isinstance(model._meta.pk, AutoFieldMixin):
        problems.append("its primary key is not a counter")
    problems += [f"{f.name} is computed by the database" for f in fields
                 if f.db_default is not models.NOT_PROVIDED or f.generated]
    problems += [f"{f.name} has its own pre_save" for f in fields
                 if type(f).pre_save is not models.Field.pre_save and not isinstance(f, models.DateField)]
    if problems:
        raise TypeError(f"rows_insert cannot insert {model.__name__}: {'; '.join(problems)}")


_plans: dict[tuple, tuple[str, list, list]] = {}


def _plan(model: type[models.Model], db, rows: int) -> tuple[str, list, list]:
    """The statement for `rows` rows of `model` on `db`'s kind of database, the fields that
    `pre_save` fills, and (attname, the field that adapts the value, or None) per column;
    made once per model, database vendor and row count."""
    key = (model, db.vendor, rows)
    plan = _plans.get(key)
    if plan is None:
        quote = db.ops.quote_name
        fields = [f for f in model._meta.concrete_fields if not f.primary_key]
        _writable_check(model, fields)
        row = "(" + ", ".join(["%s"] * len(fields)) + ")"
        sql = (f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
               f"VALUES {', '.join([row] * rows)} RETURNING {quote(model._meta.pk.column)}")
        plan = _plans[key] = (sql, [f for f in fields if _auto_time(f)],
                              [(f.attname, None if _plain(f) else f) for f in fields])
    return plan


def rows_insert(cursor, model: type[models.Model], instances: list[models.Model]) -> None:
    """Insert `instances` (unsaved, without a primary key) with `cursor` (a Django cursor,
    whose database the statement is written for), in their order, in as few statements as
    the variable limit allows; each gets its primary key and is marked saved."""
    db = cursor.db
    per_statement = max(1, _VARIABLES_MAX // len(model._meta.concrete_fields))
    for start in range(0, len(instances), per_statement):
        chunk = instances[start:start + per_statement]
        sql, timed, adapted = _plan(model, db, len(chunk))
        params = []
        for instance in chunk:
            for field in timed:
                field.pre_save(instance, True)
            for name, field in adapted:
                value = getattr(instance, name)
                params.append(value if field is None else field.get_db_prep_save(value, db))
        cursor.execute(sql, params)
        for instance, (pk,) in zip(chunk, cursor.fetchall(), strict=True):
            instance.pk = pk
            instance._state.adding = False
            instance._state.db = db.alias
