// Sign a text with the signing platform from Java 11+, standard library only
// (request signing: docs/signing-api.md §1).
//
//   java examples/SignExample.java "text to sign"
//
// Environment: SIGNPLATFORM_URL (default http://127.0.0.1:8000), SIGNPLATFORM_ACCESS_ID,
// SIGNPLATFORM_SECRET. Prints the platform's JSON answer; on an error answer it prints it on
// stderr with the HTTP status and exits with status 1.

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.time.Duration;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

public class SignExample {

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: java SignExample.java \"text to sign\"");
            System.exit(2);
        }
        String baseUrl = envOr("SIGNPLATFORM_URL", "http://127.0.0.1:8000").replaceAll("/+$", "");
        String accessId = envOr("SIGNPLATFORM_ACCESS_ID", "");
        String secret = envOr("SIGNPLATFORM_SECRET", "");
        if (accessId.isEmpty() || secret.isEmpty()) {
            System.err.println("set SIGNPLATFORM_ACCESS_ID and SIGNPLATFORM_SECRET");
            System.exit(2);
        }

        String method = "POST";
        String path = "/api/v1/sign";
        String query = ""; // no query string: the fourth line is empty
        // These exact bytes are hashed and sent.
        byte[] body = ("{\"data\": " + jsonString(args[0]) + ", \"no_hash\": false}").getBytes(StandardCharsets.UTF_8);

        String timestamp = Long.toString(System.currentTimeMillis());
        byte[] nonceBytes = new byte[16];
        new SecureRandom().nextBytes(nonceBytes);
        String nonce = hex(nonceBytes); // 32 characters from [0-9a-f]

        String stringToSign = String.join("\n",
                "HMAC-SHA256",
                method,
                path,
                query,
                accessId,
                timestamp,
                nonce,
                hex(MessageDigest.getInstance("SHA-256").digest(body)));
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(secret.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
        String signature = hex(mac.doFinal(stringToSign.getBytes(StandardCharsets.UTF_8)));

        HttpRequest request = HttpRequest.newBuilder(URI.create(baseUrl + path))
                .timeout(Duration.ofSeconds(60))
                .header("Content-Type", "application/json")
                .header("X-Access-Id", accessId)
                .header("X-Timestamp", timestamp)
                .header("X-Nonce", nonce)
                .header("X-Signature", signature)
                .method(method, HttpRequest.BodyPublishers.ofByteArray(body))
                .build();
        HttpClient client = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(10))
                .build();
        HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));

        if (response.statusCode() >= 400) {
            // {"success": false, "code": "...", "message": "...", "request_id": "...", "details": {...}}
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

    /** A JSON string literal: quotes, backslashes and control characters escaped. */
    static String jsonString(String text) {
        StringBuilder out = new StringBuilder(text.length() + 2).append('"');
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        return out.append('"').toString();
    }
}
