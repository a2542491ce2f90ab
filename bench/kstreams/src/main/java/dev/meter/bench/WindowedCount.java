package dev.meter.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.Properties;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.state.WindowStore;

/**
 * Benchmark peer (f): calls and records per app (the record key) in 15-minute tumbling windows
 * of record time, in a RocksDB window store with its changelog (Kafka Streams defaults).
 *
 * <p>Usage: WindowedCount BOOTSTRAP TOPIC APP_ID EVENTS STATE_DIR RESULT_FILE. The aggregator
 * counts the events it folds; the first one and the EVENTS-th one are timed (wall clock) and
 * the process CPU ticks (/proc/self/stat) sampled; the result is written as JSON, then the JVM
 * halts.
 */
public final class WindowedCount {
  private static final ObjectMapper JSON = new ObjectMapper();

  private static long seen;
  private static double firstAt;
  private static long firstTicks;

  private WindowedCount() {}

  public static void main(String[] args) throws Exception {
    System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
    String bootstrap = args[0];
    String topic = args[1];
    String appId = args[2];
    long events = Long.parseLong(args[3]);
    String stateDir = args[4];
    Path result = Path.of(args[5]);

    Properties props = new Properties();
    props.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
    props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
    props.put("auto.offset.reset", "earliest");

    Serde<long[]> pair = Serdes.serdeFrom(
        (t, v) -> ByteBuffer.allocate(16).putLong(v[0]).putLong(v[1]).array(),
        (t, b) -> {
          ByteBuffer buf = ByteBuffer.wrap(b);
          return new long[] {buf.getLong(), buf.getLong()};
        });

    StreamsBuilder builder = new StreamsBuilder();
    builder.stream(topic, Consumed.with(Serdes.String(), Serdes.ByteArray()))
        .groupByKey(Grouped.with(Serdes.String(), Serdes.ByteArray()))
        .windowedBy(TimeWindows.ofSizeAndGrace(Duration.ofMinutes(15), Duration.ofMinutes(1)))
        .aggregate(
            () -> new long[] {0L, 0L},
            (app, value, agg) -> {
              long records = recordsOf(value);
              long[] out = new long[] {agg[0] + 1, agg[1] + records};
              counted(events, result);
              return out;
            },
            Materialized.<String, long[], WindowStore<Bytes, byte[]>>as("calls-records-15m")
                .withKeySerde(Serdes.String())
                .withValueSerde(pair));

    KafkaStreams streams = new KafkaStreams(builder.build(), props);
    streams.setUncaughtExceptionHandler(
        exc -> {
          exc.printStackTrace();
          Runtime.getRuntime().halt(1);
          return null;
        });
    streams.start();
    Thread.currentThread().join();
  }

  private static long recordsOf(byte[] value) {
    try {
      JsonNode doc = JSON.readTree(value);
      return doc.path("records").asLong(0L);
    } catch (IOException exc) {
      return 0L;
    }
  }

  private static void counted(long events, Path result) {
    seen++;
    if (seen == 1) {
      firstAt = now();
      firstTicks = cpuTicks();
    }
    if (seen == events) {
      double lastAt = now();
      long lastTicks = cpuTicks();
      String json = String.format(
          "{\"peer\":\"kstreams\",\"events\":%d,\"t_first\":%.6f,\"t_last\":%.6f,"
              + "\"cpu_first\":%d,\"cpu_last\":%d,\"vmhwm_kb\":%d}%n",
          seen, firstAt, lastAt, firstTicks, lastTicks, vmHwmKb());
      try {
        Path tmp = result.resolveSibling(result.getFileName() + ".tmp");
        Files.writeString(tmp, json, StandardCharsets.UTF_8);
        Files.move(tmp, result);
      } catch (IOException exc) {
        exc.printStackTrace();
        Runtime.getRuntime().halt(1);
      }
      System.out.print(json);
      System.out.flush();
      Runtime.getRuntime().halt(0);
    }
  }

  private static double now() {
    Instant t = Instant.now();
    return t.getEpochSecond() + t.getNano() / 1e9;
  }

  /** utime + stime of this process in clock ticks (fields 14 and 15 of /proc/self/stat). */
  private static long cpuTicks() {
    try {
      String stat = Files.readString(Path.of("/proc/self/stat"));
      String[] f = stat.substring(stat.lastIndexOf(')') + 2).split(" ");
      return Long.parseLong(f[11]) + Long.parseLong(f[12]);
    } catch (IOException exc) {
      return -1L;
    }
  }

  private static long vmHwmKb() {
    try {
      for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
        if (line.startsWith("VmHWM:")) {
          return Long.parseLong(line.replaceAll("[^0-9]", ""));
        }
      }
    } catch (IOException exc) {
      return -1L;
    }
    return -1L;
  }
}
