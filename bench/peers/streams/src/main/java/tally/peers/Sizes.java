package tally.peers;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.Node;

/**
 * Prints `topic bytes` for each topic named: the size of its log segments as the
 * brokers report them (DescribeLogDirs), one replica counted per partition. This
 * is what the topic costs a broker's disk, record batches, headers and
 * transaction markers included, whatever the producer's compression.
 * Usage: Sizes BOOTSTRAP TOPIC...
 */
public final class Sizes {
    public static void main(String[] argv) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, argv[0]);
        List<String> topics = List.of(argv).subList(1, argv.length);
        try (Admin admin = Admin.create(p)) {
            List<Integer> brokers = admin.describeCluster().nodes().get().stream().map(Node::id).toList();
            Map<String, Map<Integer, Long>> perPartition = new HashMap<>();
            admin.describeLogDirs(brokers).allDescriptions().get().forEach((broker, dirs) ->
                dirs.forEach((dir, d) -> d.replicaInfos().forEach((tp, info) -> {
                    if (topics.contains(tp.topic())) {
                        perPartition.computeIfAbsent(tp.topic(), t -> new HashMap<>())
                            .merge(tp.partition(), info.size(), Math::max);
                    }
                })));
            Map<String, Long> out = new TreeMap<>();
            for (String t : topics) {
                out.put(t, perPartition.getOrDefault(t, Map.of()).values().stream().mapToLong(Long::longValue).sum());
            }
            out.forEach((t, n) -> System.out.println(t + " " + n));
        }
    }
}
