//! The pure core per record, without a broker: what the loop thread of `tally
//! run` spends on a record besides librdkafka (validation, transform, the output
//! record, the aggregate). `scripts/bench.sh` measures the whole
//! process on a broker; this isolates the part tally's own code decides.
//!
//!   cargo bench --bench core
//!
//! Input: the generator's records (5% malformed, no 1 MiB payloads), the same
//! mix `scripts/bench.sh` produces.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tally::aggregate::{Aggregate, Horizon};
use tally::event::{Filters, Limits, OutputLimits, ProcessConfig, process_owned, validate};
use tally::generate::Generator;
use tally::model::InputRecord;

const RECORDS: usize = 10_000;
/// 2026-01-01T00:00:00Z: event times near the record timestamps below.
const START: i64 = 1_767_225_600;

fn input() -> Vec<InputRecord> {
    let mut generator = Generator::new(7, START, 0.05, false);
    (0..RECORDS)
        .map(|i| {
            let g = generator.next_record();
            InputRecord {
                partition: (i % 6) as i32,
                offset: i as i64,
                key: Some(g.key),
                value: g.value,
                timestamp_ms: Some((START + 3_600) * 1_000),
            }
        })
        .collect()
}

fn config() -> ProcessConfig {
    ProcessConfig {
        input_topic: "user-login".into(),
        limits: Limits::default(),
        filters: Filters::default(),
        output_limits: OutputLimits::default(),
    }
}

fn per_record(c: &mut Criterion) {
    let records = input();
    let cfg = config();
    let horizon = Horizon::default();
    let mut group = c.benchmark_group("per_record");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("validate", |b| {
        b.iter(|| {
            records
                .iter()
                .filter(|r| validate(r.value.as_deref(), r.timestamp_ms, &cfg.limits).is_ok())
                .count()
        })
    });
    // The records are moved into `process_owned`, as in the pipeline; cloning
    // them is set-up, outside the measured time.
    group.bench_function("process", |b| {
        b.iter_batched(
            || records.clone(),
            |rs| {
                rs.into_iter()
                    .map(|r| process_owned(r, &cfg))
                    .collect::<Vec<_>>()
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("process_and_aggregate", |b| {
        b.iter_batched(
            || records.clone(),
            |rs| {
                let mut agg = Aggregate::default();
                for r in rs {
                    agg.apply(&process_owned(r, &cfg), horizon);
                }
                agg
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, per_record);
criterion_main!(benches);
