// Calls the quick-start gateway with java.net.http (Java 11+), as a
// single-file program:
//
//     java Client.java [BASE_URL [CA_FILE]]
//
// or FNGATE_URL / FNGATE_CA_FILE (default https://localhost:8443 and
// certs/dev-ca.pem). Only that CA is trusted. Each step prints a line; any
// answer other than the expected one exits 1. (The JDK has no JSON parser:
// the few members read here are matched in the text.)

import java.io.FileInputStream;
import java.io.InputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class Client {
    static void fail(String step, String message) {
        System.out.println("FAIL " + step + ": " + message);
        System.exit(1);
    }

    static String setting(String[] args, int index, String variable, String fallback) {
        if (args.length > index) return args[index];
        String value = System.getenv(variable);
        return value == null || value.isEmpty() ? fallback : value;
    }

    /** A TLS context that trusts the certificates of one PEM file only. */
    static SSLContext trusting(String caFile) throws Exception {
        KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
        store.load(null, null);
        try (InputStream in = new FileInputStream(caFile)) {
            int i = 0;
            for (Certificate cert : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                store.setCertificateEntry("ca-" + i++, cert);
            }
        }
        TrustManagerFactory trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        trust.init(store);
        SSLContext tls = SSLContext.getInstance("TLS");
        tls.init(null, trust.getTrustManagers(), null);
        return tls;
    }

    static String member(String json, String name) {
        Matcher m = Pattern.compile("\"" + name + "\"\\s*:\\s*\"([^\"]*)\"").matcher(json);
        return m.find() ? m.group(1) : "";
    }

    public static void main(String[] args) throws Exception {
        String base = setting(args, 0, "FNGATE_URL", "https://localhost:8443").replaceAll("/+$", "");
        String caFile = setting(args, 1, "FNGATE_CA_FILE", "certs/dev-ca.pem");
        HttpClient http = HttpClient.newBuilder()
                .sslContext(trusting(caFile))
                .connectTimeout(Duration.ofSeconds(10))
                .build();
        HttpResponse.BodyHandler<String> text = HttpResponse.BodyHandlers.ofString();
        java.util.function.BiFunction<String, String, HttpRequest> post = (path, body) ->
                HttpRequest.newBuilder(URI.create(base + path))
                        .timeout(Duration.ofSeconds(60))
                        .header("Content-Type", "application/json")
                        .POST(HttpRequest.BodyPublishers.ofString(body))
                        .build();

        // 1. A sync call.
        HttpResponse<String> a = http.send(post.apply("/demo/square", "{\"x\": 7}"), text);
        if (a.statusCode() != 200 || !a.body().trim().equals("49")) fail("sync", a.statusCode() + " " + a.body());
        System.out.println("sync: POST /demo/square {\"x\": 7} -> 200 49");

        // 2. A spawn, then polling its Location until it is no longer 202.
        a = http.send(post.apply("/demo/square/spawn", "{\"x\": 7}"), text);
        String location = a.headers().firstValue("location").orElse("");
        if (a.statusCode() != 202 || location.isEmpty()) fail("spawn", a.statusCode() + " " + a.body());
        URI status = URI.create(base + "/").resolve(location);
        int polls = 0;
        while (true) {
            polls++;
            a = http.send(HttpRequest.newBuilder(status).timeout(Duration.ofSeconds(60)).build(), text);
            if (a.statusCode() != 202) break;
            long seconds = a.headers().firstValueAsLong("retry-after").orElse(1);
            Thread.sleep(seconds * 1000);
        }
        if (a.statusCode() != 200 || !a.body().trim().equals("49")) fail("spawn", a.statusCode() + " " + a.body());
        System.out.println("spawn: 202 Location " + location + ", " + polls + " poll(s) -> 200 49");

        // 3. A long poll: the answer comes the moment the call ends.
        a = http.send(post.apply("/demo/slow/spawn", "{\"seconds\": 1}"), text);
        String callId = a.statusCode() == 202 ? member(a.body(), "call_id") : "";
        if (!callId.startsWith("fc-")) fail("long-poll", "spawn answered " + a.statusCode() + " " + a.body());
        URI poll = URI.create(base + "/calls/" + callId + "?wait=30");
        a = http.send(HttpRequest.newBuilder(poll).timeout(Duration.ofSeconds(60)).build(), text);
        if (a.statusCode() != 200 || !a.body().replaceAll("\\s", "").equals("{\"slept\":1}")) {
            fail("long-poll", a.statusCode() + " " + a.body());
        }
        System.out.println("long-poll: GET /calls/" + callId + "?wait=30 -> 200 {\"slept\": 1}");

        // 4. An error's machine-readable code.
        a = http.send(post.apply("/demo/nope", "{}"), text);
        String type = a.headers().firstValue("content-type").orElse("");
        if (a.statusCode() != 404 || !type.startsWith("application/problem+json")
                || !member(a.body(), "code").equals("function_not_found")) {
            fail("error", a.statusCode() + " " + type + " " + a.body());
        }
        System.out.println("error: POST /demo/nope -> 404 function_not_found");
    }
}
