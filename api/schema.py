"""OpenAPI description of the request signing: four headers, all required together."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension

_DESCRIPTIONS = {
    "X-Access-Id": "The access ID issued in the admin.",
    "X-Timestamp": "Unix time in milliseconds.",
    "X-Nonce": "16-64 characters from [A-Za-z0-9_-], fresh for every request.",
    "X-Signature": "Lowercase hex HMAC-SHA256 of the string to sign, keyed with the App Secret "
    "(see the README, 'Calling the API').",
}


class HmacSignatureScheme(OpenApiAuthenticationExtension):
    target_class = "api.auth.RequestAuthentication"
    name = ["AccessId", "Timestamp", "Nonce", "Signature"]

    def get_security_definition(self, auto_schema):
        return [
            {"type": "apiKey", "in": "header", "name": header, "description": description}
            for header, description in _DESCRIPTIONS.items()
        ]
