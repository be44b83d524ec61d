//! Telemetry fields (with their dcgm-exporter names), per-step summaries and GPU events.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One telemetry field. Each maps to the DCGM field dcgm-exporter publishes, so a site's
/// dashboards read the same numbers under the names they know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// GPU temperature, °C.
    GpuTempC,
    /// HBM temperature, °C.
    MemTempC,
    /// Power draw, W.
    PowerW,
    /// Energy since driver load, mJ.
    EnergyMj,
    /// SM clock, MHz.
    SmClockMhz,
    /// Memory clock, MHz.
    MemClockMhz,
    /// GPU utilization, %.
    GpuUtilPct,
    /// Memory (copy) utilization, %.
    MemUtilPct,
    /// Framebuffer used, MiB.
    FbUsedMib,
    /// Volatile corrected (single-bit) ECC errors.
    EccCorrectedVolatile,
    /// Volatile uncorrected (double-bit) ECC errors.
    EccUncorrectedVolatile,
    /// Aggregate corrected ECC errors.
    EccCorrectedAggregate,
    /// Aggregate uncorrected ECC errors.
    EccUncorrectedAggregate,
    /// Rows remapped for correctable errors.
    RowRemapCorrectable,
    /// Rows remapped for uncorrectable errors.
    RowRemapUncorrectable,
    /// 1 when a row remap is pending (needs a GPU reset).
    RowRemapPending,
    /// 1 when row remapping failed.
    RowRemapFailure,
    /// Pages retired for single-bit errors (pre-Ampere).
    RetiredPagesSbe,
    /// Pages retired for double-bit errors (pre-Ampere).
    RetiredPagesDbe,
    /// Clock event (throttle) reasons bitmask.
    ThrottleReasons,
    /// PCIe replay counter.
    PcieReplay,
    /// Current PCIe link generation.
    PcieLinkGen,
    /// Current PCIe link width.
    PcieLinkWidth,
    /// Fan speed, % (absent on passively cooled cards).
    FanSpeedPct,
}

impl Field {
    /// Every field, in display order.
    pub const ALL: [Field; 24] = [
        Self::GpuTempC,
        Self::MemTempC,
        Self::PowerW,
        Self::EnergyMj,
        Self::SmClockMhz,
        Self::MemClockMhz,
        Self::GpuUtilPct,
        Self::MemUtilPct,
        Self::FbUsedMib,
        Self::EccCorrectedVolatile,
        Self::EccUncorrectedVolatile,
        Self::EccCorrectedAggregate,
        Self::EccUncorrectedAggregate,
        Self::RowRemapCorrectable,
        Self::RowRemapUncorrectable,
        Self::RowRemapPending,
        Self::RowRemapFailure,
        Self::RetiredPagesSbe,
        Self::RetiredPagesDbe,
        Self::ThrottleReasons,
        Self::PcieReplay,
        Self::PcieLinkGen,
        Self::PcieLinkWidth,
        Self::FanSpeedPct,
    ];

    /// Its place in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Tollgate's name, used in plans, gates, the wire and reports.
    pub fn name(self) -> &'static str {
        self.describe().0
    }

    /// The DCGM field id name dcgm-exporter uses for the same number.
    pub fn dcgm_name(self) -> &'static str {
        self.describe().1
    }

    /// Unit, for display.
    pub fn unit(self) -> &'static str {
        self.describe().2
    }

    /// How `/metrics` exports this field: under its DCGM name, with dcgm-exporter's type and
    /// HELP text, when `etc/default-counters.csv` of dcgm-exporter lists it (enabled, or shipped
    /// commented out as the ECC and retired-page counters are, which sites enable for exactly
    /// these numbers); otherwise as `tollgate_gpu_<name>`, a gauge, so that no family Tollgate
    /// invents carries a DCGM name a dashboard could misread.
    pub fn exported(self) -> Exported {
        use MetricKind::{Counter, Gauge};
        let dcgm = |kind, help| Exported {
            name: std::borrow::Cow::Borrowed(self.dcgm_name()),
            kind,
            help,
            dcgm: true,
        };
        let own = |help| Exported {
            name: std::borrow::Cow::Owned(format!("tollgate_gpu_{}", self.name())),
            kind: Gauge,
            help,
            dcgm: false,
        };
        // HELP texts as dcgm-exporter's default-counters.csv words them.
        match self {
            Self::GpuTempC => dcgm(Gauge, "GPU temperature (in C)."),
            Self::MemTempC => dcgm(Gauge, "Memory temperature (in C)."),
            Self::PowerW => dcgm(Gauge, "Power draw (in W)."),
            Self::EnergyMj => dcgm(Counter, "Total energy consumption since boot (in mJ)."),
            Self::SmClockMhz => dcgm(Gauge, "SM clock frequency (in MHz)."),
            Self::MemClockMhz => dcgm(Gauge, "Memory clock frequency (in MHz)."),
            Self::GpuUtilPct => dcgm(Gauge, "GPU utilization (in %)."),
            Self::MemUtilPct => dcgm(Gauge, "Memory utilization (in %)."),
            Self::FbUsedMib => dcgm(Gauge, "Framebuffer memory used (in MiB)."),
            Self::EccCorrectedVolatile => {
                dcgm(Counter, "Total number of single-bit volatile ECC errors.")
            }
            Self::EccUncorrectedVolatile => {
                dcgm(Counter, "Total number of double-bit volatile ECC errors.")
            }
            Self::EccCorrectedAggregate => {
                dcgm(Counter, "Total number of single-bit persistent ECC errors.")
            }
            Self::EccUncorrectedAggregate => {
                dcgm(Counter, "Total number of double-bit persistent ECC errors.")
            }
            Self::RowRemapCorrectable => {
                dcgm(Counter, "Number of remapped rows for correctable errors")
            }
            Self::RowRemapUncorrectable => {
                dcgm(Counter, "Number of remapped rows for uncorrectable errors")
            }
            Self::RowRemapFailure => dcgm(Gauge, "Whether remapping of rows has failed"),
            Self::RetiredPagesSbe => dcgm(
                Counter,
                "Total number of retired pages due to single-bit errors.",
            ),
            Self::RetiredPagesDbe => dcgm(
                Counter,
                "Total number of retired pages due to double-bit errors.",
            ),
            Self::PcieReplay => dcgm(Counter, "Total number of PCIe retries."),
            Self::RowRemapPending => own("1 when a row remap is pending (needs a GPU reset)."),
            Self::ThrottleReasons => own("Clock event (throttle) reasons bitmask."),
            Self::PcieLinkGen => own("Current PCIe link generation."),
            Self::PcieLinkWidth => own("Current PCIe link width."),
            Self::FanSpeedPct => own("Fan speed (in %)."),
        }
    }

    fn describe(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::GpuTempC => ("gpu_temp_c", "DCGM_FI_DEV_GPU_TEMP", "°C"),
            Self::MemTempC => ("mem_temp_c", "DCGM_FI_DEV_MEMORY_TEMP", "°C"),
            Self::PowerW => ("power_w", "DCGM_FI_DEV_POWER_USAGE", "W"),
            Self::EnergyMj => ("energy_mj", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "mJ"),
            Self::SmClockMhz => ("sm_clock_mhz", "DCGM_FI_DEV_SM_CLOCK", "MHz"),
            Self::MemClockMhz => ("mem_clock_mhz", "DCGM_FI_DEV_MEM_CLOCK", "MHz"),
            Self::GpuUtilPct => ("gpu_util_pct", "DCGM_FI_DEV_GPU_UTIL", "%"),
            Self::MemUtilPct => ("mem_util_pct", "DCGM_FI_DEV_MEM_COPY_UTIL", "%"),
            Self::FbUsedMib => ("fb_used_mib", "DCGM_FI_DEV_FB_USED", "MiB"),
            Self::EccCorrectedVolatile => (
                "ecc_corrected_volatile",
                "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
                "",
            ),
            Self::EccUncorrectedVolatile => (
                "ecc_uncorrected_volatile",
                "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
                "",
            ),
            Self::EccCorrectedAggregate => (
                "ecc_corrected_aggregate",
                "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
                "",
            ),
            Self::EccUncorrectedAggregate => (
                "ecc_uncorrected_aggregate",
                "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
                "",
            ),
            Self::RowRemapCorrectable => (
                "row_remap_correctable",
                "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
                "",
            ),
            Self::RowRemapUncorrectable => (
                "row_remap_uncorrectable",
                "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
                "",
            ),
            Self::RowRemapPending => ("row_remap_pending", "DCGM_FI_DEV_ROW_REMAP_PENDING", ""),
            Self::RowRemapFailure => ("row_remap_failure", "DCGM_FI_DEV_ROW_REMAP_FAILURE", ""),
            Self::RetiredPagesSbe => ("retired_pages_sbe", "DCGM_FI_DEV_RETIRED_SBE", ""),
            Self::RetiredPagesDbe => ("retired_pages_dbe", "DCGM_FI_DEV_RETIRED_DBE", ""),
            Self::ThrottleReasons => (
                "throttle_reasons",
                "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
                "bitmask",
            ),
            Self::PcieReplay => ("pcie_replay", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", ""),
            Self::PcieLinkGen => ("pcie_link_gen", "DCGM_FI_DEV_PCIE_LINK_GEN", ""),
            Self::PcieLinkWidth => ("pcie_link_width", "DCGM_FI_DEV_PCIE_LINK_WIDTH", ""),
            Self::FanSpeedPct => ("fan_speed_pct", "DCGM_FI_DEV_FAN_SPEED", "%"),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Field {
    type Err = String;
    /// By Tollgate's name or the DCGM name: a binary search over both, sorted once (every
    /// fleet telemetry sample names about twenty fields).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        static BY_NAME: std::sync::LazyLock<Vec<(&'static str, Field)>> =
            std::sync::LazyLock::new(|| {
                let mut names: Vec<(&'static str, Field)> = Field::ALL
                    .into_iter()
                    .flat_map(|field| [(field.name(), field), (field.dcgm_name(), field)])
                    .collect();
                names.sort_unstable_by_key(|(name, _)| *name);
                names.dedup_by_key(|(name, _)| *name);
                names
            });
        match BY_NAME.binary_search_by_key(&s, |(name, _)| *name) {
            Ok(idx) => Ok(BY_NAME[idx].1),
            Err(_) => {
                let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
                Err(format!(
                    "unknown telemetry field '{s}' (known: {})",
                    names.join(", ")
                ))
            }
        }
    }
}

/// A Prometheus metric type, as `/metrics` declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Goes up and down.
    Gauge,
    /// Only goes up (until the GPU or driver resets it).
    Counter,
}

impl MetricKind {
    /// The word in a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gauge => "gauge",
            Self::Counter => "counter",
        }
    }
}

/// How a [`Field`] appears in `/metrics` ([`Field::exported`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exported {
    /// The family name.
    pub name: std::borrow::Cow<'static, str>,
    /// Its type.
    pub kind: MetricKind,
    /// Its HELP text.
    pub help: &'static str,
    /// Whether `name` is the DCGM field name (else Tollgate's own `tollgate_gpu_*`).
    pub dcgm: bool,
}

/// Summary of one field on one GPU over one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldSummary {
    /// The field.
    pub field: Field,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Last sample.
    pub last: f64,
    /// Number of samples.
    pub samples: u32,
}

impl FieldSummary {
    /// Summarizes samples in the order taken; `None` when there are none.
    pub fn from_samples(field: Field, values: &[f64]) -> Option<Self> {
        let last = *values.last()?;
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
        Some(Self {
            field,
            min: sorted[0],
            max: sorted[n - 1],
            mean: values.iter().sum::<f64>() / n as f64,
            p99: sorted[rank - 1],
            last,
            samples: u32::try_from(n).unwrap_or(u32::MAX),
        })
    }
}

/// Every field summary of one GPU over one step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuTelemetry {
    /// NVML device index.
    pub gpu_index: u32,
    /// GPU UUID.
    pub gpu_uuid: String,
    /// Summaries of the fields the GPU supports.
    pub fields: Vec<FieldSummary>,
    /// Sampling rounds without a sample from this GPU.
    pub samples_missed: u32,
}

impl GpuTelemetry {
    /// The summary of `field`, when the GPU reported it.
    pub fn field(&self, field: Field) -> Option<&FieldSummary> {
        self.fields.iter().find(|summary| summary.field == field)
    }
}

/// Most points a [`TelemetrySeries`] holds, however long its step ran.
pub const MAX_SERIES_POINTS: usize = 120;

/// One bucket of a downsampled series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Start of the bucket, milliseconds after the attempt started.
    pub offset_ms: u64,
    /// Mean of the samples in the bucket.
    pub mean: f64,
    /// Smallest sample in the bucket.
    pub min: f64,
    /// Largest sample in the bucket.
    pub max: f64,
    /// Samples in the bucket.
    pub samples: u32,
}

/// One field of one GPU over one attempt, downsampled for charts. Not used by gates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySeries {
    /// NVML device index.
    pub gpu_index: u32,
    /// The field.
    pub field: Field,
    /// Width of every bucket, milliseconds.
    pub bucket_ms: u64,
    /// Buckets that hold samples, in time order; at most [`MAX_SERIES_POINTS`].
    pub points: Vec<SeriesPoint>,
}

/// Builds a bounded series from samples as they come: buckets start `bucket_ms` wide, and
/// when a sample falls past the last allowed bucket the width doubles and neighbours merge,
/// so memory stays bounded for a step of any length.
#[derive(Clone, Debug)]
pub struct SeriesBuilder {
    bucket_ms: u64,
    max_points: usize,
    /// Bucket number → (sum, min, max, samples).
    buckets: std::collections::BTreeMap<u64, (f64, f64, f64, u32)>,
}

impl SeriesBuilder {
    /// Starts with buckets `bucket_ms` wide (at least 1) and at most `max_points` of them.
    pub fn new(bucket_ms: u64, max_points: usize) -> Self {
        Self {
            bucket_ms: bucket_ms.max(1),
            max_points: max_points.max(1),
            buckets: std::collections::BTreeMap::new(),
        }
    }

    /// Adds a sample taken `offset_ms` after the start.
    pub fn push(&mut self, offset_ms: u64, value: f64) {
        while offset_ms / self.bucket_ms >= self.max_points as u64 {
            self.bucket_ms = self.bucket_ms.saturating_mul(2);
            let old = std::mem::take(&mut self.buckets);
            for (bucket, (sum, min, max, n)) in old {
                let merged = self.buckets.entry(bucket / 2).or_insert((
                    0.0,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    0,
                ));
                merged.0 += sum;
                merged.1 = merged.1.min(min);
                merged.2 = merged.2.max(max);
                merged.3 += n;
            }
        }
        let bucket = self.buckets.entry(offset_ms / self.bucket_ms).or_insert((
            0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0,
        ));
        bucket.0 += value;
        bucket.1 = bucket.1.min(value);
        bucket.2 = bucket.2.max(value);
        bucket.3 += 1;
    }

    /// The series so far.
    pub fn build(&self, gpu_index: u32, field: Field) -> TelemetrySeries {
        TelemetrySeries {
            gpu_index,
            field,
            bucket_ms: self.bucket_ms,
            points: self
                .buckets
                .iter()
                .map(|(bucket, (sum, min, max, n))| SeriesPoint {
                    offset_ms: bucket * self.bucket_ms,
                    mean: sum / f64::from((*n).max(1)),
                    min: *min,
                    max: *max,
                    samples: *n,
                })
                .collect(),
        }
    }
}

/// Kinds of critical GPU events.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case", parse_err_ty = String, parse_err_fn = crate::names::unknown::<Self>)]
pub enum EventKind {
    /// An XID error; `code` is the XID.
    Xid,
    /// Uncorrected ECC errors; `code` is the count.
    EccUncorrected,
    /// The GPU fell off the bus.
    GpuLost,
}

impl EventKind {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A critical event on one GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuEvent {
    /// NVML device index.
    pub gpu_index: u32,
    /// GPU UUID.
    pub gpu_uuid: String,
    /// Kind.
    pub kind: EventKind,
    /// XID code, or error count.
    pub code: i64,
    /// When the agent saw it.
    pub at: Timestamp,
    /// Free text from the source.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_samples() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let summary = FieldSummary::from_samples(Field::GpuTempC, &values).expect("samples");
        assert_eq!((summary.min, summary.max, summary.mean), (1.0, 100.0, 50.5));
        assert_eq!(
            (summary.p99, summary.last, summary.samples),
            (99.0, 100.0, 100)
        );
        let one = FieldSummary::from_samples(Field::PowerW, &[7.0]).expect("one sample");
        assert_eq!((one.min, one.max, one.p99, one.last), (7.0, 7.0, 7.0, 7.0));
        assert!(FieldSummary::from_samples(Field::PowerW, &[]).is_none());
    }

    #[test]
    fn a_series_stays_bounded_and_keeps_mean_min_and_max() {
        let mut builder = SeriesBuilder::new(1000, MAX_SERIES_POINTS);
        // An hour at 1 Hz: 3600 samples rising by one each second.
        for second in 0..3600u64 {
            builder.push(second * 1000, second as f64);
        }
        let series = builder.build(0, Field::PowerW);
        assert!(
            series.points.len() <= MAX_SERIES_POINTS,
            "{}",
            series.points.len()
        );
        assert!(series.points.len() >= MAX_SERIES_POINTS / 2);
        assert_eq!(series.bucket_ms, 32_000);
        let total: u32 = series.points.iter().map(|p| p.samples).sum();
        assert_eq!(total, 3600, "no sample lost in merging");
        let first = series.points[0];
        assert_eq!((first.offset_ms, first.min, first.max), (0, 0.0, 31.0));
        assert_eq!(first.mean, 15.5);
        let last = series.points.last().expect("points");
        assert_eq!(last.max, 3599.0);
        // A short step keeps every sample as its own point.
        let mut short = SeriesBuilder::new(1000, MAX_SERIES_POINTS);
        for second in 0..5u64 {
            short.push(second * 1000, 1.0);
        }
        assert_eq!(short.build(0, Field::PowerW).points.len(), 5);
    }

    #[test]
    fn names_and_dcgm_names_are_unique_and_parse_back() {
        let mut names = std::collections::BTreeSet::new();
        for (idx, field) in Field::ALL.into_iter().enumerate() {
            assert_eq!(field.index(), idx, "{field} out of ALL's order");
            assert!(names.insert(field.name()), "duplicate {field}");
            assert!(
                names.insert(field.dcgm_name()),
                "duplicate {}",
                field.dcgm_name()
            );
            assert_eq!(field.name().parse::<Field>(), Ok(field));
            assert_eq!(field.dcgm_name().parse::<Field>(), Ok(field));
            assert_eq!(serde_json::to_value(field).expect("json"), field.name());
        }
        for unknown in ["", "gpu_temp", "gpu_temp_c ", "GPU_TEMP_C", "zzz", "a"] {
            let error = unknown.parse::<Field>().expect_err(unknown);
            assert!(error.contains("known: gpu_temp_c"), "{error}");
        }
    }
}
