// Adds, removes and lists ACLs with the options of Kafka's kafka-acls.sh
// (org.apache.kafka.tools.AclCommand), which lives in the kafka-tools jar that
// the test broker's classpath leaves out. `scripts/kafka.sh acl ...` runs it as
// the admin of a --secure cluster, so a line of docs/operations.md works here
// as it is, minus --bootstrap-server and --command-config.
//
//   java -cp 'libs/*' Acl.java --bootstrap-server B --command-config FILE
//       (--add | --remove | --list)
//       [--allow-principal P]... [--deny-principal P]... [--principal P]
//       [--allow-host H] [--deny-host H] [--operation OP]...
//       [--topic T]... [--group G]... [--transactional-id T]... [--cluster]
//       [--resource-pattern-type literal|prefixed|any|match] [--force]
//
// As kafka-acls: --add without --operation adds All; --remove and --list
// without a principal or operation match any; --remove asks nothing.

import java.io.FileInputStream;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AccessControlEntryFilter;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourcePatternFilter;
import org.apache.kafka.common.resource.ResourceType;
import org.apache.kafka.common.utils.SecurityUtils;

public class Acl {
    record Entry(String principal, String host, AclPermissionType permission) {}

    static void usage(String why) {
        System.err.println("acl: " + why);
        System.exit(2);
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = null, commandConfig = null, action = null, listPrincipal = null;
        String allowHost = "*", denyHost = "*";
        List<String> allow = new ArrayList<>(), deny = new ArrayList<>();
        List<AclOperation> ops = new ArrayList<>();
        List<ResourcePattern> resources = new ArrayList<>();
        List<String[]> named = new ArrayList<>();
        String patternType = null;
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            String v = null;
            if (!List.of("--add", "--remove", "--list", "--cluster", "--force").contains(a)) {
                if (i + 1 >= args.length) usage(a + " needs a value");
                v = args[++i];
            }
            switch (a) {
                case "--bootstrap-server" -> bootstrap = v;
                case "--command-config" -> commandConfig = v;
                case "--add", "--remove", "--list" -> {
                    if (action != null) usage("one of --add, --remove, --list");
                    action = a;
                }
                case "--allow-principal" -> allow.add(v);
                case "--deny-principal" -> deny.add(v);
                case "--principal" -> listPrincipal = v;
                case "--allow-host" -> allowHost = v;
                case "--deny-host" -> denyHost = v;
                case "--operation" -> {
                    AclOperation op = SecurityUtils.operation(v);
                    if (op == AclOperation.UNKNOWN) usage("unknown operation " + v);
                    ops.add(op);
                }
                case "--topic" -> named.add(new String[] {"topic", v});
                case "--group" -> named.add(new String[] {"group", v});
                case "--transactional-id" -> named.add(new String[] {"transactional-id", v});
                case "--cluster" -> named.add(new String[] {"cluster", "kafka-cluster"});
                case "--resource-pattern-type" -> patternType = v;
                case "--force" -> { }
                default -> usage("unknown option " + a);
            }
        }
        if (bootstrap == null) usage("--bootstrap-server is required");
        if (action == null) usage("one of --add, --remove, --list is required");
        PatternType pattern = patternType == null
                ? (action.equals("--list") && named.isEmpty() ? PatternType.ANY : PatternType.LITERAL)
                : PatternType.fromString(patternType.toUpperCase(Locale.ROOT));
        if (pattern == PatternType.UNKNOWN) usage("unknown pattern type " + patternType);
        if (action.equals("--add") && !pattern.isSpecific()) {
            usage("--add needs --resource-pattern-type literal or prefixed");
        }
        for (String[] n : named) {
            ResourceType type = switch (n[0]) {
                case "topic" -> ResourceType.TOPIC;
                case "group" -> ResourceType.GROUP;
                case "transactional-id" -> ResourceType.TRANSACTIONAL_ID;
                default -> ResourceType.CLUSTER;
            };
            resources.add(new ResourcePattern(type, n[1], type == ResourceType.CLUSTER ? PatternType.LITERAL : pattern));
        }

        Properties props = new Properties();
        if (commandConfig != null) {
            try (InputStream in = new FileInputStream(commandConfig)) {
                props.load(in);
            }
        }
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(props)) {
            switch (action) {
                case "--add" -> {
                    if (resources.isEmpty()) usage("--add needs a resource (--topic, --group, --transactional-id, --cluster)");
                    if (allow.isEmpty() && deny.isEmpty()) usage("--add needs --allow-principal or --deny-principal");
                    List<Entry> entries = new ArrayList<>();
                    for (String p : allow) entries.add(new Entry(p, allowHost, AclPermissionType.ALLOW));
                    for (String p : deny) entries.add(new Entry(p, denyHost, AclPermissionType.DENY));
                    List<AclOperation> addOps = ops.isEmpty() ? List.of(AclOperation.ALL) : ops;
                    List<AclBinding> bindings = new ArrayList<>();
                    for (ResourcePattern r : resources) {
                        System.out.println("Adding ACLs for resource `" + r + "`:");
                        for (Entry e : entries) {
                            for (AclOperation op : addOps) {
                                AccessControlEntry ace = new AccessControlEntry(e.principal(), e.host(), op, e.permission());
                                System.out.println(" \t" + ace);
                                bindings.add(new AclBinding(r, ace));
                            }
                        }
                    }
                    admin.createAcls(bindings).all().get();
                }
                case "--remove" -> {
                    if (resources.isEmpty()) usage("--remove needs a resource (--topic, --group, --transactional-id, --cluster)");
                    List<AclBindingFilter> filters = new ArrayList<>();
                    List<Entry> entries = new ArrayList<>();
                    for (String p : allow) entries.add(new Entry(p, allowHost, AclPermissionType.ALLOW));
                    for (String p : deny) entries.add(new Entry(p, denyHost, AclPermissionType.DENY));
                    if (entries.isEmpty()) entries.add(new Entry(null, null, AclPermissionType.ANY));
                    List<AclOperation> removeOps = ops.isEmpty() ? List.of(AclOperation.ANY) : ops;
                    for (ResourcePattern r : resources) {
                        ResourcePatternFilter rf = new ResourcePatternFilter(r.resourceType(), r.name(), r.patternType());
                        for (Entry e : entries) {
                            for (AclOperation op : removeOps) {
                                filters.add(new AclBindingFilter(rf, new AccessControlEntryFilter(e.principal(), e.host(), op, e.permission())));
                            }
                        }
                    }
                    Collection<AclBinding> removed = admin.deleteAcls(filters).all().get();
                    print("Removed", removed);
                }
                default -> {
                    List<ResourcePatternFilter> rfs = new ArrayList<>();
                    for (ResourcePattern r : resources) {
                        rfs.add(new ResourcePatternFilter(r.resourceType(), r.name(), r.patternType()));
                    }
                    if (rfs.isEmpty()) rfs.add(new ResourcePatternFilter(ResourceType.ANY, null, pattern));
                    List<AclBinding> found = new ArrayList<>();
                    for (ResourcePatternFilter rf : rfs) {
                        found.addAll(admin.describeAcls(new AclBindingFilter(rf,
                                new AccessControlEntryFilter(listPrincipal, null, AclOperation.ANY, AclPermissionType.ANY)))
                                .values().get());
                    }
                    print("Current", found);
                }
            }
        }
    }

    static void print(String what, Collection<AclBinding> bindings) {
        Map<String, List<AccessControlEntry>> byResource = new TreeMap<>();
        for (AclBinding b : bindings) {
            byResource.computeIfAbsent(b.pattern().toString(), k -> new ArrayList<>()).add(b.entry());
        }
        for (Map.Entry<String, List<AccessControlEntry>> e : byResource.entrySet()) {
            System.out.println(what + " ACLs for resource `" + e.getKey() + "`:");
            for (AccessControlEntry ace : e.getValue()) System.out.println(" \t" + ace);
            System.out.println();
        }
    }
}
