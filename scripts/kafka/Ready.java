// Waits until a Kafka cluster serves what tally needs: the expected number of
// brokers registered, a group coordinator and a transaction coordinator. Asking
// for both coordinators also makes the broker create __consumer_offsets and
// __transaction_state now rather than inside the first test's timeout.
//
//   java -cp 'libs/*' Ready.java BOOTSTRAP BROKERS TIMEOUT_SECONDS [CLIENT_PROPERTIES]
//
// CLIENT_PROPERTIES: a Java client properties file (security.protocol, SASL,
// truststore) for a secured cluster, as the admin.
//
// Exit 0 when ready, 1 with the last reason on stderr when the time runs out.

import java.io.FileInputStream;
import java.io.InputStream;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeConsumerGroupsOptions;
import org.apache.kafka.clients.admin.DescribeTransactionsOptions;
import org.apache.kafka.common.errors.GroupIdNotFoundException;
import org.apache.kafka.common.errors.TransactionalIdNotFoundException;

public class Ready {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        int brokers = Integer.parseInt(args[1]);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[2]));
        Properties props = new Properties();
        if (args.length > 3) {
            try (InputStream in = new FileInputStream(args[3])) {
                props.load(in);
            }
        }
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "10000");
        String why = "not asked yet";
        try (Admin admin = Admin.create(props)) {
            while (System.nanoTime() < deadline) {
                try {
                    int seen = admin.describeCluster().nodes().get(10, TimeUnit.SECONDS).size();
                    if (seen < brokers) {
                        why = seen + " of " + brokers + " brokers registered";
                    } else {
                        try {
                            admin.describeConsumerGroups(List.of("tally-ready-probe"),
                                    new DescribeConsumerGroupsOptions().timeoutMs(10000)).all().get();
                        } catch (ExecutionException e) {
                            // The coordinator answered: there is no such group.
                            if (!(e.getCause() instanceof GroupIdNotFoundException)) throw e;
                        }
                        try {
                            admin.describeTransactions(List.of("tally-ready-probe"),
                                    new DescribeTransactionsOptions().timeoutMs(10000)).all().get();
                        } catch (ExecutionException e) {
                            // The coordinator answered: this id has no transaction.
                            if (!(e.getCause() instanceof TransactionalIdNotFoundException)) throw e;
                        }
                        return;
                    }
                } catch (Exception e) {
                    Throwable cause = e instanceof ExecutionException ? e.getCause() : e;
                    why = cause.toString();
                }
                Thread.sleep(200);
            }
        }
        System.err.println("kafka not ready at " + bootstrap + ": " + why);
        System.exit(1);
    }
}
