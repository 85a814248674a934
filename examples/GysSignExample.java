// The `gys` client profile (docs/client-profiles.md): stands for the clients of the old gys
// signing service (server-side validator with AppSecretService, headers gys_access_id,
// gys_timestamp, gys_nonce, gys_signature). A minimal example, Java 11+, standard library only.
//
//   java examples/GysSignExample.java [--print-string-to-sign] "text to sign"
//
// Environment: SIGNPLATFORM_URL (default http://127.0.0.1:8000), SIGNPLATFORM_ACCESS_ID,
// SIGNPLATFORM_SECRET (the access ID's App Secret; the gys profile must be enabled for it).
// --print-string-to-sign (or DEBUG=1) prints the string to sign on stderr. Prints the
// platform's JSON answer; on an error answer it prints it on stderr with the HTTP status and
// exits with status 1.

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

public class GysSignExample {

    public static void main(String[] args) throws Exception {
        boolean debug = "1".equals(System.getenv("DEBUG"));
        List<String> rest = new ArrayList<>();
        for (String arg : args) {
            if (arg.equals("--print-string-to-sign")) {
                debug = true;
            } else {
                rest.add(arg);
            }
        }
        if (rest.size() != 1) {
            System.err.println("usage: java GysSignExample.java [--print-string-to-sign] \"text to sign\"");
            System.exit(2);
        }
        String baseUrl = envOr("SIGNPLATFORM_URL", "http://127.0.0.1:8000").replaceAll("/+$", "");
        String accessId = envOr("SIGNPLATFORM_ACCESS_ID", "");
        String secret = envOr("SIGNPLATFORM_SECRET", "");
        if (accessId.isEmpty() || secret.isEmpty()) {
            System.err.println("set SIGNPLATFORM_ACCESS_ID and SIGNPLATFORM_SECRET");
            System.exit(2);
        }

        // The request's parameters, in the order they are sent. The values keep their types, so
        // the body and the string to sign are written from the same data without a JSON parser.
        Map<String, Object> params = new LinkedHashMap<>();
        params.put("data", rest.get(0));
        params.put("no_hash", false);
        byte[] body = json(params).getBytes(StandardCharsets.UTF_8); // these exact bytes are sent

        String timestamp = Long.toString(System.currentTimeMillis()); // Unix milliseconds
        String nonce = UUID.randomUUID().toString();

        // The top-level fields (JSON null left out) and the three gys headers, sorted by key in
        // code point order, written key=value and joined with '&'.
        Map<String, Object> signed = new LinkedHashMap<>();
        params.forEach((key, value) -> {
            if (value != null) {
                signed.put(key, value);
            }
        });
        signed.put("gys_access_id", accessId);
        signed.put("gys_timestamp", timestamp);
        signed.put("gys_nonce", nonce);
        List<String> keys = new ArrayList<>(signed.keySet());
        keys.sort(GysSignExample::byCodePoint);
        List<String> pairs = new ArrayList<>();
        for (String key : keys) {
            Object value = signed.get(key);
            // A string as it is; numbers, true/false, objects and arrays as their compact JSON.
            pairs.add(key + "=" + (value instanceof String ? (String) value : json(value)));
        }
        String stringToSign = String.join("&", pairs);
        if (debug) {
            System.err.println("--- string to sign ---");
            System.err.println(stringToSign);
            System.err.println("--- end of string to sign ---");
        }
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(secret.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
        String signature = hex(mac.doFinal(stringToSign.getBytes(StandardCharsets.UTF_8)));

        // Header names with underscores: a reverse proxy in front of the platform must pass them
        // (nginx: `underscores_in_headers on;`).
        HttpRequest request = HttpRequest.newBuilder(URI.create(baseUrl + "/api/v1/sign"))
                .timeout(Duration.ofSeconds(60))
                .header("Content-Type", "application/json; charset=utf-8")
                .header("gys_access_id", accessId)
                .header("gys_timestamp", timestamp)
                .header("gys_nonce", nonce)
                .header("gys_signature", signature)
                .POST(HttpRequest.BodyPublishers.ofByteArray(body))
                .build();
        HttpClient client = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(10))
                .build();
        HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));

        if (response.statusCode() >= 400) {
            // {"success": false, "code": "SIGNATURE_VALIDATION_FAILED", "message": "签名验证失败"}
            System.err.println("HTTP " + response.statusCode() + ": " + response.body());
            System.exit(1);
        }
        // {"signature": "<base64>", "cert_no": "...", "algorithm": "...", "device": "...", "request_id": "..."}
        System.out.println(response.body());
    }

    static String envOr(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isEmpty() ? fallback : value;
    }

    static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder(bytes.length * 2);
        for (byte b : bytes) {
            out.append(Character.forDigit((b >> 4) & 0xf, 16)).append(Character.forDigit(b & 0xf, 16));
        }
        return out.toString();
    }

    /** Compares by Unicode code point (String.compareTo compares UTF-16 units). */
    static int byCodePoint(String a, String b) {
        int i = 0;
        int j = 0;
        while (i < a.length() && j < b.length()) {
            int ca = a.codePointAt(i);
            int cb = b.codePointAt(j);
            if (ca != cb) {
                return Integer.compare(ca, cb);
            }
            i += Character.charCount(ca);
            j += Character.charCount(cb);
        }
        return Boolean.compare(i < a.length(), j < b.length());
    }

    /** Compact JSON of a String, Boolean, Integer/Long, Map, List or null (keys in their order). */
    static String json(Object value) {
        if (value == null) {
            return "null";
        }
        if (value instanceof String) {
            return jsonString((String) value);
        }
        if (value instanceof Boolean || value instanceof Integer || value instanceof Long) {
            return value.toString();
        }
        StringBuilder out = new StringBuilder();
        if (value instanceof Map) {
            out.append('{');
            for (Map.Entry<?, ?> entry : ((Map<?, ?>) value).entrySet()) {
                if (out.length() > 1) {
                    out.append(',');
                }
                out.append(jsonString(entry.getKey().toString())).append(':').append(json(entry.getValue()));
            }
            return out.append('}').toString();
        }
        if (value instanceof List) {
            out.append('[');
            for (Object item : (List<?>) value) {
                if (out.length() > 1) {
                    out.append(',');
                }
                out.append(json(item));
            }
            return out.append(']').toString();
        }
        throw new IllegalArgumentException("no JSON form for " + value.getClass().getName());
    }

    /** A JSON string literal: quotes, backslashes and control characters escaped, the rest as is. */
    static String jsonString(String text) {
        StringBuilder out = new StringBuilder(text.length() + 2).append('"');
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                case '\b': out.append("\\b"); break;
                case '\f': out.append("\\f"); break;
                default:
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
            }
        }
        return out.append('"').toString();
    }
}
