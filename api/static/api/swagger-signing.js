/* Swagger UI's "Try it out", signed in the browser (docs/signing-api.md §1): every request to
 * /api/v1/ (but the health check, the schema and the docs) gets X-Access-Id, X-Timestamp,
 * X-Nonce and X-Signature = hex HMAC-SHA256 of the eight-line string to sign, keyed with the
 * App Secret typed into the page. The secret is read from its input when a request is made and
 * kept nowhere else: not in storage, not in a cookie, not sent.
 *
 * Loaded after swagger-ui-bundle.js and before drf-spectacular's start-up script: it wraps
 * SwaggerUIBundle so that the request interceptor that script passes is followed by this one. */
"use strict";

(function () {
  const UNSIGNED = /^\/api\/v1\/(health|schema\/|docs\/)/;
  const encoder = new TextEncoder();
  const status = document.getElementById("signing-status");
  const last = document.getElementById("signing-last");
  const accessInput = document.getElementById("signing-access-id");
  const secretInput = document.getElementById("signing-secret");

  function hex(buffer) {
    return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function decode(text) {
    try {
      return decodeURIComponent(text);
    } catch (e) {
      return text; // not valid percent-encoding: the server keeps it as it is too
    }
  }

  // RFC 3986: only A-Z a-z 0-9 - _ . ~ stay; encodeURIComponent also leaves ! ' ( ) * alone.
  function encode(text) {
    return encodeURIComponent(text).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
  }

  // §1.3: split on &, a piece without = is name=, + is a space, decode, encode again, sort.
  function canonicalQuery(search) {
    const query = search.startsWith("?") ? search.slice(1) : search;
    if (!query) {
      return "";
    }
    const pairs = query.split("&").filter((piece) => piece !== "").map((piece) => {
      const at = piece.indexOf("=");
      const name = at < 0 ? piece : piece.slice(0, at);
      const value = at < 0 ? "" : piece.slice(at + 1);
      return [encode(decode(name.replace(/\+/g, " "))), encode(decode(value.replace(/\+/g, " ")))];
    });
    pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
    return pairs.map((pair) => pair[0] + "=" + pair[1]).join("&");
  }

  function nonce() {
    return hex(crypto.getRandomValues(new Uint8Array(16)));
  }

  function show(kind, text) {
    status.className = kind;
    status.textContent = text;
  }

  function idle() {
    if (!window.isSecureContext || !(window.crypto && crypto.subtle)) {
      show("insecure", status.dataset.insecure);
    } else if (accessInput.value.trim() && secretInput.value) {
      show("signing", status.dataset.signing);
    } else {
      show("", status.dataset.unsigned);
    }
  }

  async function sign(request) {
    const accessId = accessInput.value.trim();
    const secret = secretInput.value;
    const url = new URL(request.url, document.baseURI);
    if (request.loadSpec || url.origin !== window.location.origin || !url.pathname.startsWith("/api/v1/")
        || UNSIGNED.test(url.pathname) || !accessId || !secret || !(window.crypto && crypto.subtle)) {
      return request;
    }
    // Hash exactly the bytes that will be sent: a body Swagger holds as an object is sent as JSON.
    let body = request.body;
    if (body !== undefined && body !== null && typeof body !== "string") {
      if (body instanceof FormData || body instanceof Blob || body instanceof URLSearchParams) {
        return request; // the API takes JSON only
      }
      body = JSON.stringify(body);
      request.body = body;
    }
    const bodyHash = hex(await crypto.subtle.digest("SHA-256", encoder.encode(body || "")));
    const timestamp = String(Date.now());
    const once = nonce();
    const text = ["HMAC-SHA256", (request.method || "GET").toUpperCase(), decode(url.pathname),
                  canonicalQuery(url.search), accessId, timestamp, once, bodyHash].join("\n");
    const key = await crypto.subtle.importKey("raw", encoder.encode(secret), {name: "HMAC", hash: "SHA-256"},
                                              false, ["sign"]);
    const signature = hex(await crypto.subtle.sign("HMAC", key, encoder.encode(text)));
    request.headers = Object.assign({}, request.headers, {
      "X-Access-Id": accessId, "X-Timestamp": timestamp, "X-Nonce": once, "X-Signature": signature,
    });
    last.textContent = text;
    show("signing", status.dataset.signed + " " + (request.method || "GET").toUpperCase() + " " + url.pathname);
    return request;
  }

  const bundle = window.SwaggerUIBundle;
  function signingBundle(options) {
    const before = options.requestInterceptor;
    options.requestInterceptor = async (request) => sign((before ? await before(request) : request) || request);
    return bundle(options);
  }
  window.SwaggerUIBundle = Object.assign(signingBundle, bundle);

  accessInput.addEventListener("input", idle);
  secretInput.addEventListener("input", idle);
  idle();
})();
