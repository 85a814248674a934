"""The card package: the E-Port control's protocol, the card connection and queue (the
gateway), the channel-layer message contract, the client that sends requests to a
gateway, the card status, and the card simulator.

No Django here (a test imports it without Django installed): the gateway is given its
device configuration and hooks (status, events, PIN unsealing) by whoever hosts it —
the platform (`signing.gateway_host`) or the card agent on a Windows PC."""
