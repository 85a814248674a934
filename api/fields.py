"""Serializer fields that take JSON types as they are: a number is not a string, a string is
not a boolean (DRF's own fields convert both). A wrong type is a 400 naming the field."""

from __future__ import annotations

from rest_framework import serializers

from core.jsontext import json_kind


class StrictCharField(serializers.CharField):
    default_error_messages = {"type": "must be a string, not {kind}"}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("type", kind=json_kind(data))
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"type": "must be true or false, not {kind}"}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("type", kind=json_kind(data))
        return data


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"type": "must be a whole number, not {kind}"}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("type", kind=json_kind(data))
        return super().to_internal_value(data)


def not_blank(value: str) -> None:
    """Text a card will sign: the card refuses empty or white-space-only input."""
    if not value.strip():
        raise serializers.ValidationError("must not be empty or only white space (the card refuses it)")
