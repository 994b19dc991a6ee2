package tally.peers;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.lang.management.ManagementFactory;
import java.net.InetAddress;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.StateRestoreListener;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * tally's job in Kafka Streams: validate user-login events with tally's rules,
 * mask the IP and add the processing metadata, send valid events to the output
 * topic and invalid ones (original bytes, reason in headers) to the DLQ, and count
 * by device type, app version, locale and minute in a RocksDB store with its
 * changelog. One processor node with two sinks, so one input record is one store
 * update batch and one output or DLQ record, as in tally.
 *
 * <p>Modes (first argument):
 * <ul>
 *   <li>{@code run}: optional warm-up on other topics in the same JVM, then prints
 *       {@code timed-start <epoch ms> <process cpu ns>} and runs until SIGTERM.
 *   <li>{@code restore}: starts on an empty state directory, prints
 *       {@code restored <ms from start to RUNNING> <records restored> <ms from the
 *       first store's restore start to the last one's end>} and exits.
 * </ul>
 */
public final class StreamsPeer {
    static final String STORE = "counts";
    static final int MAX_VALUE_BYTES = 256 * 1024;
    static final long MAX_FUTURE_SKEW_SECS = 24 * 3600;
    static final String[] REQUIRED = {
        "user_id", "app_version", "device_type", "ip", "locale", "device_id", "timestamp"
    };
    static final String[] STRINGS = {"user_id", "app_version", "device_type", "ip", "locale", "device_id"};
    static final ObjectMapper JSON = new ObjectMapper(
            JsonFactory.builder().enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION).build())
            .enable(com.fasterxml.jackson.databind.DeserializationFeature.FAIL_ON_TRAILING_TOKENS);
    static final DateTimeFormatter RFC3339 =
            DateTimeFormatter.ofPattern("yyyy-MM-dd'T'HH:mm:ss'Z'").withZone(ZoneOffset.UTC);
    static final AtomicLong PROCESSED = new AtomicLong();

    /** A rejected record: tally's reason code and message. */
    static final class Rejected extends Exception {
        final String reason;

        Rejected(String reason, String message) {
            super(message, null, false, false);
            this.reason = reason;
        }
    }

    /** A valid event, its fields as tally reads them. */
    record Event(ObjectNode fields, String userId, String appVersion, String deviceType,
                 String ip, String locale, String deviceId, long timestamp) {}

    static Event validate(byte[] value, long recordTimestampMs) throws Rejected {
        if (value == null) throw new Rejected("null_value", "record value is null (tombstone)");
        if (value.length == 0) throw new Rejected("empty_value", "record value is empty");
        if (value.length > MAX_VALUE_BYTES) throw new Rejected("too_large", "value is " + value.length + " bytes");
        String text;
        try {
            text = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(value)).toString();
        } catch (CharacterCodingException e) {
            throw new Rejected("invalid_utf8", "value is not UTF-8");
        }
        JsonNode json;
        try {
            json = JSON.readTree(text);
        } catch (Exception e) {
            throw new Rejected("invalid_json", "value is not valid JSON");
        }
        if (json == null || !json.isObject()) throw new Rejected("not_an_object", "value is not an object");
        ObjectNode obj = (ObjectNode) json;
        for (String f : REQUIRED) {
            JsonNode v = obj.get(f);
            if (v == null) throw new Rejected("missing_field", "required field " + f + " is missing");
            if (v.isNull()) throw new Rejected("null_field", "required field " + f + " is null");
        }
        String[] s = new String[STRINGS.length];
        for (int i = 0; i < STRINGS.length; i++) {
            JsonNode v = obj.get(STRINGS[i]);
            if (!v.isTextual()) throw new Rejected("wrong_type", "field " + STRINGS[i] + " must be a string");
            if (v.asText().isBlank()) throw new Rejected("empty_field", "field " + STRINGS[i] + " is empty");
            s[i] = v.asText();
        }
        long ts = timestamp(obj.get("timestamp"));
        long latest = recordTimestampMs >= 0
                ? Math.floorDiv(recordTimestampMs, 1000) + MAX_FUTURE_SKEW_SECS
                : 4_102_444_800L;
        if (ts > latest) throw new Rejected("future_timestamp", "timestamp is in the future");
        if (!validIp(s[3])) throw new Rejected("bad_ip", "ip is neither IPv4 nor IPv6");
        if (!validVersion(s[1])) throw new Rejected("bad_app_version", "app_version is not a version");
        return new Event(obj, s[0], s[1], s[2], s[3], s[4], s[5], ts);
    }

    static long timestamp(JsonNode v) throws Rejected {
        if (v.isIntegralNumber()) {
            if (!v.canConvertToLong()) throw new Rejected("future_timestamp", "timestamp out of range");
            long t = v.asLong();
            if (t < 0) throw new Rejected("negative_timestamp", "timestamp is negative");
            return t;
        }
        if (v.isNumber()) throw new Rejected("bad_timestamp", "timestamp is not a whole number of seconds");
        if (v.isTextual()) {
            String t = v.asText().trim();
            if (t.startsWith("-") && t.length() > 1 && t.substring(1).chars().allMatch(Character::isDigit)) {
                throw new Rejected("negative_timestamp", "timestamp is negative");
            }
            if (t.isEmpty() || !t.chars().allMatch(c -> c >= '0' && c <= '9')) {
                throw new Rejected("bad_timestamp", "timestamp is not epoch seconds");
            }
            try {
                return Long.parseLong(t);
            } catch (NumberFormatException e) {
                throw new Rejected("future_timestamp", "timestamp out of range");
            }
        }
        throw new Rejected("wrong_type", "field timestamp must be an integer or a numeric string");
    }

    /** IPv4 dotted quads or IPv6 literals only (never a name lookup). */
    static boolean validIp(String ip) {
        if (ip.indexOf(':') >= 0) {
            if (!ip.chars().allMatch(c -> Character.digit(c, 16) >= 0 || c == ':' || c == '.')) return false;
            try {
                InetAddress.getByName(ip);
                return true;
            } catch (Exception e) {
                return false;
            }
        }
        String[] parts = ip.split("\\.", -1);
        if (parts.length != 4) return false;
        for (String p : parts) {
            if (p.isEmpty() || p.length() > 3 || !p.chars().allMatch(c -> c >= '0' && c <= '9')) return false;
            if (p.length() > 1 && p.charAt(0) == '0') return false;
            if (Integer.parseInt(p) > 255) return false;
        }
        return true;
    }

    /** tally's AppVersion: 1 to 4 dot-separated decimal parts, then an optional -/+ suffix. */
    static boolean validVersion(String v) {
        int parts = 0, digits = 0;
        for (int i = 0; i < v.length(); i++) {
            char c = v.charAt(i);
            if (c >= '0' && c <= '9') {
                if (parts >= 4) return false;
                digits++;
                if (digits > 19) return false;
            } else if (c == '.' && digits > 0) {
                parts++;
                digits = 0;
            } else if (c == '-' || c == '+') {
                break;
            } else {
                return false;
            }
        }
        return digits > 0;
    }

    static String maskIp(String ip) {
        if (ip.indexOf(':') < 0) {
            return ip.substring(0, ip.lastIndexOf('.')) + ".0/24";
        }
        try {
            byte[] b = InetAddress.getByName(ip).getAddress();
            return String.format("%x:%x:%x::/48",
                    ((b[0] & 0xff) << 8) | (b[1] & 0xff), ((b[2] & 0xff) << 8) | (b[3] & 0xff),
                    ((b[4] & 0xff) << 8) | (b[5] & 0xff));
        } catch (Exception e) {
            return "masked";
        }
    }

    /** The processor: validation, transform, counts, and the choice of sink. */
    static final class LoginProcessor implements Processor<byte[], byte[], byte[], byte[]> {
        private ProcessorContext<byte[], byte[]> ctx;
        private KeyValueStore<String, Long> counts;

        @Override
        public void init(ProcessorContext<byte[], byte[]> context) {
            ctx = context;
            counts = context.getStateStore(STORE);
        }

        @Override
        public void process(Record<byte[], byte[]> r) {
            var meta = ctx.recordMetadata().orElseThrow();
            PROCESSED.incrementAndGet();
            Event e;
            try {
                e = validate(r.value(), r.timestamp());
            } catch (Rejected x) {
                var h = new RecordHeaders();
                h.add("tally.reason", x.reason.getBytes(StandardCharsets.UTF_8));
                h.add("tally.message", x.getMessage().getBytes(StandardCharsets.UTF_8));
                h.add("tally.source.topic", meta.topic().getBytes(StandardCharsets.UTF_8));
                h.add("tally.source.partition", Integer.toString(meta.partition()).getBytes(StandardCharsets.UTF_8));
                h.add("tally.source.offset", Long.toString(meta.offset()).getBytes(StandardCharsets.UTF_8));
                ctx.forward(new Record<>(r.key(), r.value(), r.timestamp(), h), "dlq");
                return;
            }
            add("d:" + e.deviceType());
            add("v:" + e.appVersion());
            add("l:" + e.locale());
            add("m:" + Math.floorDiv(e.timestamp(), 60));
            ObjectNode out = e.fields();
            out.put("ip", maskIp(e.ip()));
            out.put("timestamp", e.timestamp());
            out.put("login_time", RFC3339.format(Instant.ofEpochSecond(e.timestamp())));
            out.put("processed", true);
            out.put("source_topic", meta.topic());
            out.put("source_partition", meta.partition());
            out.put("source_offset", meta.offset());
            byte[] bytes;
            try {
                bytes = JSON.writeValueAsBytes(out);
            } catch (Exception x) {
                throw new IllegalStateException(x);
            }
            ctx.forward(new Record<>(e.userId().getBytes(StandardCharsets.UTF_8), bytes, r.timestamp()), "out");
        }

        private void add(String key) {
            Long n = counts.get(key);
            counts.put(key, n == null ? 1 : n + 1);
        }
    }

    static Topology topology(String input, String output, String dlq) {
        Topology t = new Topology();
        t.addSource("in", new ByteArrayDeserializer(), new ByteArrayDeserializer(), input);
        t.addProcessor("process", LoginProcessor::new, "in");
        t.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore(STORE), Serdes.String(), Serdes.Long()), "process");
        t.addSink("out", output, new ByteArraySerializer(), new ByteArraySerializer(), "process");
        t.addSink("dlq", dlq, new ByteArraySerializer(), new ByteArraySerializer(), "process");
        return t;
    }

    /**
     * The configuration. {@code defaults}: only what the job cannot run without
     * (ids, bootstrap, state dir, exactly-once). {@code tuned}: also the settings
     * README.md names, each aligned with what tally's librdkafka clients do.
     */
    static Properties config(Map<String, String> a, String appId) {
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, a.get("bootstrap"));
        p.put(StreamsConfig.STATE_DIR_CONFIG, a.get("state-dir"));
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        if (a.getOrDefault("profile", "tuned").equals("tuned")) {
            p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, "100");
            p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, "1");
            p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), "5");
            p.put(StreamsConfig.producerPrefix(ProducerConfig.BATCH_SIZE_CONFIG), "262144");
            p.put(StreamsConfig.consumerPrefix(ConsumerConfig.MAX_POLL_RECORDS_CONFIG), "5000");
            p.put(StreamsConfig.consumerPrefix(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG), "10000");
        }
        for (String kv : a.getOrDefault("extra", "").split(";")) {
            int eq = kv.indexOf('=');
            if (eq > 0) p.put(kv.substring(0, eq), kv.substring(eq + 1));
        }
        return p;
    }

    /** One line for run.sh, flushed at once (it waits for some of them). */
    static void say(String line) {
        System.out.println(line);
        System.out.flush();
    }

    static long cpuNanos() {
        return ((com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean())
                .getProcessCpuTime();
    }

    /** Runs the topology on warm-up topics until `count` records went through, then closes it. */
    static void warmUp(Map<String, String> a) throws InterruptedException {
        long count = Long.parseLong(a.getOrDefault("warmup-count", "0"));
        if (count == 0) return;
        String prefix = a.get("warmup-prefix");
        Map<String, String> w = new HashMap<>(a);
        w.put("state-dir", a.get("state-dir") + "-warmup");
        var streams = new KafkaStreams(
                topology(prefix + "-in", prefix + "-out", prefix + "-dlq"), config(w, a.get("app-id") + "-warmup"));
        streams.start();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(300);
        while (PROCESSED.get() < count && System.nanoTime() < deadline) Thread.sleep(20);
        streams.close(Duration.ofSeconds(30));
        streams.cleanUp();
        say("warmed-up " + PROCESSED.get());
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> a = new HashMap<>();
        for (int i = 1; i + 1 < argv.length; i += 2) a.put(argv[i].replaceFirst("^--", ""), argv[i + 1]);
        String mode = argv.length > 0 ? argv[0] : "run";
        if (mode.equals("run")) warmUp(a);
        var streams = new KafkaStreams(
                topology(a.get("input"), a.get("output"), a.get("dlq")), config(a, a.get("app-id")));
        var restored = new AtomicLong();
        var firstRestoreStart = new AtomicLong();
        var lastRestoreEnd = new AtomicLong();
        streams.setGlobalStateRestoreListener(new StateRestoreListener() {
            @Override
            public void onRestoreStart(TopicPartition tp, String store, long start, long end) {
                firstRestoreStart.compareAndSet(0, System.nanoTime());
            }

            @Override
            public void onBatchRestored(TopicPartition tp, String store, long end, long n) {
                restored.addAndGet(n);
            }

            @Override
            public void onRestoreEnd(TopicPartition tp, String store, long total) {
                lastRestoreEnd.set(System.nanoTime());
            }
        });
        var running = new CountDownLatch(1);
        var stopped = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING) running.countDown();
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) stopped.countDown();
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(30));
            stopped.countDown();
        }));
        long t0 = System.nanoTime();
        say("timed-start " + System.currentTimeMillis() + " " + cpuNanos());
        streams.start();
        if (mode.equals("restore")) {
            running.await();
            long ms = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0);
            long phase = TimeUnit.NANOSECONDS.toMillis(lastRestoreEnd.get() - firstRestoreStart.get());
            say("restored " + ms + " " + restored.get() + " " + phase);
            streams.close(Duration.ofSeconds(30));
            System.exit(0);
        }
        running.await();
        say("running " + System.currentTimeMillis());
        stopped.await();
        System.exit(streams.state() == KafkaStreams.State.ERROR ? 1 : 0);
    }
}
