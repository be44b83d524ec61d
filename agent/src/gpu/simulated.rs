//! Simulated GPUs: a plausible H100 node whose numbers are a pure function of the node name,
//! the seed, the sample count and whether a step is loading it, with injectable faults.
//!
//! Nothing here reads the clock or an OS random source, so two agents with the same name and
//! seed report the same inventory and the same telemetry sequence. Every report says
//! `gpu_source: simulated`, so simulated evidence can never pass for real hardware.

use super::{GpuError, GpuSource, Sample};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;
use tollgate_domain::fleet::{GpuInfo, GpuSourceKind, Inventory};
use tollgate_domain::telemetry::{EventKind, Field, GpuEvent};

/// The product name every simulated GPU reports.
pub const SIM_GPU_NAME: &str = "NVIDIA H100 80GB HBM3 (simulated)";

/// Clock-event reason bits (NVML `nvmlClocksEventReason*`) the over-temp fault raises:
/// software thermal slowdown (0x20) and hardware thermal slowdown (0x40).
const THERMAL_THROTTLE_BITS: f64 = (0x20 | 0x40) as f64;

/// A fault injected into a simulated node (`--fault`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// GPU 0 runs at 92-96 °C under load.
    OverTemp,
    /// GPU 0 reports an uncorrected ECC error once a step loads it.
    EccUncorrected,
    /// GPU 0 raises this XID during the first step that loads it.
    Xid(i64),
    /// GPU 0 raises XID `code` once, outside any step: on the first idle sample taken
    /// `seconds` or more after a step that loaded it ended (`idle-xid=CODE:SECONDS`), as a
    /// node that fails some time after its firmware was flashed does.
    IdleXid {
        /// The XID.
        code: i64,
        /// How long after the step it comes.
        seconds: u32,
    },
    /// Every GPU idles this many degrees hotter, from `seconds` after a step that loaded it
    /// ended on (`idle-hot=DEGREES:SECONDS`), as a node whose new firmware drives its fans
    /// or clocks wrong at idle does; under load the temperatures are as without it.
    IdleHot {
        /// How much hotter, °C.
        degrees: u32,
        /// How long after the step it starts.
        seconds: u32,
    },
    /// The node reports this driver version.
    Driver(String),
    /// Every GPU reports this VBIOS version.
    Vbios(String),
    /// The first sample of GPU `gpu` taken while a step loads the node hangs for `seconds`,
    /// as a wedged driver call does (`stall=GPU:SECONDS`).
    Stall {
        /// The GPU whose sample hangs.
        gpu: u32,
        /// How long it hangs.
        seconds: u32,
    },
    /// Models firmware and driver installs (`versions-file=PATH`): while PATH exists, each of
    /// its `name=version` lines overrides what the node reports (`driver`, `vbios` on every GPU,
    /// any other name as a probe-reported component). A test's `flash` command writes the file,
    /// as a real installer changes what NVML reports.
    VersionsFile(String),
}

impl FromStr for Fault {
    type Err = String;

    /// Parses `over-temp`, `ecc-uncorrected`, `xid=CODE`, `idle-xid=CODE:SECONDS`,
    /// `idle-hot=DEGREES:SECONDS`, `driver=VERSION`, `vbios=VERSION`, `stall=GPU:SECONDS` or
    /// `versions-file=PATH`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = "expected over-temp, ecc-uncorrected, xid=CODE, idle-xid=CODE:SECONDS, \
             idle-hot=DEGREES:SECONDS, driver=VERSION, vbios=VERSION, stall=GPU:SECONDS or \
             versions-file=PATH";
        match text.split_once('=') {
            None if text == "over-temp" => Ok(Self::OverTemp),
            None if text == "ecc-uncorrected" => Ok(Self::EccUncorrected),
            Some(("xid", code)) => code
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|code| *code > 0)
                .map(Self::Xid)
                .ok_or_else(|| format!("fault '{text}': XID code must be a positive integer")),
            Some(("idle-xid", spec)) => spec
                .split_once(':')
                .and_then(|(code, seconds)| {
                    Some(Self::IdleXid {
                        code: code.trim().parse().ok().filter(|code| *code > 0)?,
                        seconds: seconds.trim().parse().ok()?,
                    })
                })
                .ok_or_else(|| {
                    format!(
                        "fault '{text}': expected idle-xid=CODE:SECONDS with a positive XID \
                         code, e.g. idle-xid=79:2"
                    )
                }),
            Some(("idle-hot", spec)) => spec
                .split_once(':')
                .and_then(|(degrees, seconds)| {
                    Some(Self::IdleHot {
                        degrees: degrees.trim().parse().ok().filter(|d| *d > 0)?,
                        seconds: seconds.trim().parse().ok()?,
                    })
                })
                .ok_or_else(|| {
                    format!(
                        "fault '{text}': expected idle-hot=DEGREES:SECONDS with a positive whole \
                         number of degrees, e.g. idle-hot=15:2"
                    )
                }),
            Some(("driver" | "vbios", version)) if version.trim().is_empty() => {
                Err(format!("fault '{text}': the version is empty"))
            }
            Some(("driver", version)) => Ok(Self::Driver(version.trim().to_owned())),
            Some(("stall", spec)) => spec
                .split_once(':')
                .and_then(|(gpu, seconds)| {
                    Some(Self::Stall {
                        gpu: gpu.trim().parse().ok()?,
                        seconds: seconds.trim().parse().ok().filter(|s| *s > 0)?,
                    })
                })
                .ok_or_else(|| {
                    format!("fault '{text}': expected stall=GPU:SECONDS, e.g. stall=1:3")
                }),
            Some(("vbios", version)) => Ok(Self::Vbios(version.trim().to_owned())),
            Some(("versions-file", path)) if !path.trim().is_empty() => {
                Ok(Self::VersionsFile(path.trim().to_owned()))
            }
            _ => Err(format!("unknown fault '{text}' ({expected})")),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OverTemp => f.write_str("over-temp"),
            Self::EccUncorrected => f.write_str("ecc-uncorrected"),
            Self::Xid(code) => write!(f, "xid={code}"),
            Self::IdleXid { code, seconds } => write!(f, "idle-xid={code}:{seconds}"),
            Self::IdleHot { degrees, seconds } => write!(f, "idle-hot={degrees}:{seconds}"),
            Self::Driver(version) => write!(f, "driver={version}"),
            Self::Vbios(version) => write!(f, "vbios={version}"),
            Self::Stall { gpu, seconds } => write!(f, "stall={gpu}:{seconds}"),
            Self::VersionsFile(path) => write!(f, "versions-file={path}"),
        }
    }
}

/// What a simulated node looks like.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Node name; part of every identifier.
    pub node: String,
    /// Seed; `None` derives one from the node name.
    pub seed: Option<u64>,
    /// Number of GPUs.
    pub n_gpus: u32,
    /// Driver version reported (unless a `driver=` fault overrides it).
    pub driver: String,
    /// VBIOS version reported (unless a `vbios=` fault overrides it).
    pub vbios: String,
    /// Injected faults.
    pub faults: Vec<Fault>,
}

/// Mutable simulation state, behind the source's mutex.
#[derive(Debug, Default)]
struct SimState {
    /// Samples taken so far, per GPU; the PRNG input that moves the numbers.
    ticks: Vec<u64>,
    /// Whether a step is loading the GPUs.
    loaded: bool,
    /// Energy counter per GPU, mJ.
    energy_mj: Vec<f64>,
    /// The XID fault fires once.
    xid_fired: bool,
    /// The ECC fault fires once; the counter then stays up, as real counters do.
    ecc_fired: bool,
    /// The stall fault fires once.
    stall_fired: bool,
    /// When a step last stopped loading the GPUs.
    unloaded_at: Option<tollgate_domain::Timestamp>,
    /// The idle XID fault fires once.
    idle_xid_fired: bool,
    /// Events not yet drained by [`GpuSource::events`].
    pending: Vec<GpuEvent>,
}

/// A simulated node. See the module docs.
#[derive(Debug)]
pub struct SimulatedSource {
    config: SimConfig,
    seed: u64,
    hostname: String,
    state: Mutex<SimState>,
}

impl SimulatedSource {
    /// A simulated node as configured.
    pub fn new(config: SimConfig) -> Self {
        let seed = config.seed.unwrap_or_else(|| seed_from_name(&config.node));
        let state = SimState {
            energy_mj: vec![0.0; config.n_gpus as usize],
            ticks: vec![0; config.n_gpus as usize],
            ..SimState::default()
        };
        Self {
            config,
            seed,
            hostname: super::hostname(),
            state: Mutex::new(state),
        }
    }

    /// The seed in use (given or derived from the node name).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn has(&self, fault: &Fault) -> bool {
        self.config.faults.contains(fault)
    }

    fn xid_fault(&self) -> Option<i64> {
        self.config.faults.iter().find_map(|fault| match fault {
            Fault::Xid(code) => Some(*code),
            _ => None,
        })
    }

    /// The `name=version` lines of the `versions-file=` fault's file, when it exists.
    fn flashed_versions(&self) -> Vec<(String, String)> {
        let Some(path) = self.config.faults.iter().find_map(|fault| match fault {
            Fault::VersionsFile(path) => Some(path),
            _ => None,
        }) else {
            return Vec::new();
        };
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, version)| (name.trim().to_owned(), version.trim().to_owned()))
            .filter(|(name, version)| !name.is_empty() && !version.is_empty())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        // The state holds plain numbers: a panic elsewhere cannot leave it half-updated in a
        // way that matters, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn uuid(&self, gpu_idx: u32) -> String {
        let h = |salt: u64| {
            mix(&[
                self.seed,
                u64::from(gpu_idx),
                salt,
                name_hash(&self.config.node),
            ])
        };
        let (a, b) = (h(1), h(2));
        format!(
            "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }

    fn gpu_info(&self, gpu_idx: u32, vbios: &str) -> GpuInfo {
        // HGX H100 boards put their eight GPUs on these buses; more GPUs continue upward.
        const BUSES: [u32; 8] = [0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb];
        let bus = BUSES
            .get(gpu_idx as usize)
            .copied()
            .unwrap_or(0xdc + gpu_idx);
        let serial = 1_654_922_000_000 + mix(&[self.seed, u64::from(gpu_idx), 3]) % 1_000_000;
        GpuInfo {
            index: gpu_idx,
            uuid: self.uuid(gpu_idx),
            name: SIM_GPU_NAME.to_owned(),
            serial: Some(serial.to_string()),
            board_part_number: Some("692-2G520-0200-000".to_owned()),
            pci_bus_id: format!("00000000:{bus:02X}:00.0"),
            vbios_version: vbios.to_owned(),
            inforom_version: Some("G520.0200.00.05".to_owned()),
            memory_total_mib: 81_559,
            ecc_enabled: Some(true),
            power_limit_w: Some(700.0),
            max_pcie_gen: Some(5),
            max_pcie_width: Some(16),
        }
    }

    fn stall_fault(&self) -> Option<(u32, u32)> {
        self.config.faults.iter().find_map(|fault| match fault {
            Fault::Stall { gpu, seconds } => Some((*gpu, *seconds)),
            _ => None,
        })
    }

    /// Advances one GPU by one sample and returns its fields.
    fn next_gpu_sample(&self, state: &mut SimState, gpu_idx: u32) -> BTreeMap<Field, f64> {
        state.ticks[gpu_idx as usize] += 1;
        if gpu_idx == 0 {
            self.fire_faults(state);
        }
        self.gpu_fields(state, gpu_idx)
    }

    fn gpu_fields(&self, state: &mut SimState, gpu_idx: u32) -> BTreeMap<Field, f64> {
        let tick = state.ticks[gpu_idx as usize];
        // A uniform number in [0, 1) for one field of one GPU at this tick.
        let noise = |salt: u64| {
            (mix(&[self.seed, u64::from(gpu_idx), tick, salt]) >> 11) as f64 / (1u64 << 53) as f64
        };
        let between = |lo: f64, hi: f64, salt: u64| lo + (hi - lo) * noise(salt);
        let hot_gpu0 = gpu_idx == 0 && self.has(&Fault::OverTemp);
        let loaded = state.loaded;
        let ecc_now = gpu_idx == 0 && state.ecc_fired;
        let mut values = BTreeMap::new();
        let mut put = |field: Field, value: f64| {
            values.insert(field, value);
        };
        let (temp, power) = match (loaded, hot_gpu0) {
            (true, true) => (between(92.0, 96.0, 1), between(600.0, 690.0, 2)),
            (true, false) => (between(60.0, 75.0, 1), between(500.0, 650.0, 2)),
            (false, _) => (
                between(33.0, 37.0, 1) + self.idle_heat(state),
                between(65.0, 75.0, 2),
            ),
        };
        put(Field::GpuTempC, temp.round());
        put(Field::MemTempC, (temp + between(2.0, 6.0, 3)).round());
        put(Field::PowerW, (power * 10.0).round() / 10.0);
        // The simulated clock advances one second per round: energy is power × 1 s.
        let energy = &mut state.energy_mj[gpu_idx as usize];
        *energy += power * 1000.0;
        put(Field::EnergyMj, energy.round());
        if loaded {
            put(Field::SmClockMhz, if hot_gpu0 { 1755.0 } else { 1980.0 });
            put(Field::GpuUtilPct, between(93.0, 99.0, 4).round());
            put(Field::MemUtilPct, between(55.0, 80.0, 5).round());
            put(Field::FbUsedMib, between(60_000.0, 70_000.0, 6).round());
        } else {
            put(Field::SmClockMhz, 345.0);
            put(Field::GpuUtilPct, 0.0);
            put(Field::MemUtilPct, 0.0);
            put(Field::FbUsedMib, 0.0);
        }
        put(Field::MemClockMhz, 2619.0);
        let ecc_uncorrected = if ecc_now { 1.0 } else { 0.0 };
        put(Field::EccCorrectedVolatile, 0.0);
        put(Field::EccUncorrectedVolatile, ecc_uncorrected);
        put(Field::EccCorrectedAggregate, 0.0);
        put(Field::EccUncorrectedAggregate, ecc_uncorrected);
        put(Field::RowRemapCorrectable, 0.0);
        put(Field::RowRemapUncorrectable, 0.0);
        put(Field::RowRemapPending, 0.0);
        put(Field::RowRemapFailure, 0.0);
        put(
            Field::ThrottleReasons,
            if loaded && hot_gpu0 {
                THERMAL_THROTTLE_BITS
            } else {
                0.0
            },
        );
        put(Field::PcieReplay, 0.0);
        put(Field::PcieLinkGen, if loaded { 5.0 } else { 1.0 });
        put(Field::PcieLinkWidth, 16.0);
        // Fan speed stays absent: H100 SXM boards are passively cooled, and leaving it out
        // exercises the "unsupported fields are absent" path end to end.
        values
    }

    /// How much hotter an idle GPU runs now under the idle-hot fault: its degrees once its
    /// time after the last step came, else nothing.
    fn idle_heat(&self, state: &SimState) -> f64 {
        let Some((degrees, seconds)) = self.config.faults.iter().find_map(|fault| match fault {
            Fault::IdleHot { degrees, seconds } => Some((*degrees, *seconds)),
            _ => None,
        }) else {
            return 0.0;
        };
        let due = state.unloaded_at.is_some_and(|ended| {
            crate::clock::now() >= ended + chrono::Duration::seconds(i64::from(seconds))
        });
        if due { f64::from(degrees) } else { 0.0 }
    }

    fn idle_xid_fault(&self) -> Option<(i64, u32)> {
        self.config.faults.iter().find_map(|fault| match fault {
            Fault::IdleXid { code, seconds } => Some((*code, *seconds)),
            _ => None,
        })
    }

    /// The idle XID fault, once its time after the last step came.
    fn fire_idle_faults(&self, state: &mut SimState) {
        let Some((code, seconds)) = self.idle_xid_fault() else {
            return;
        };
        let now = crate::clock::now();
        let due = state
            .unloaded_at
            .is_some_and(|ended| now >= ended + chrono::Duration::seconds(i64::from(seconds)));
        if due && !state.idle_xid_fired {
            state.idle_xid_fired = true;
            state.pending.push(GpuEvent {
                gpu_index: 0,
                gpu_uuid: self.uuid(0),
                kind: EventKind::Xid,
                code,
                at: now,
                detail: format!("simulated XID {code} outside a step (injected fault)"),
            });
        }
    }

    fn fire_faults(&self, state: &mut SimState) {
        if self.config.n_gpus == 0 {
            return;
        }
        if !state.loaded {
            self.fire_idle_faults(state);
            return;
        }
        let uuid = self.uuid(0);
        if let Some(code) = self.xid_fault()
            && !state.xid_fired
        {
            state.xid_fired = true;
            state.pending.push(GpuEvent {
                gpu_index: 0,
                gpu_uuid: uuid.clone(),
                kind: EventKind::Xid,
                code,
                at: crate::clock::now(),
                detail: format!("simulated XID {code} (injected fault)"),
            });
        }
        if self.has(&Fault::EccUncorrected) && !state.ecc_fired {
            state.ecc_fired = true;
            state.pending.push(GpuEvent {
                gpu_index: 0,
                gpu_uuid: uuid,
                kind: EventKind::EccUncorrected,
                code: 1,
                at: crate::clock::now(),
                detail: "simulated double-bit ECC error (injected fault)".to_owned(),
            });
        }
    }
}

impl GpuSource for SimulatedSource {
    fn kind(&self) -> GpuSourceKind {
        GpuSourceKind::Simulated
    }

    fn inventory(&self) -> Result<Inventory, GpuError> {
        let driver = self
            .config
            .faults
            .iter()
            .rev()
            .find_map(|fault| match fault {
                Fault::Driver(version) => Some(version.clone()),
                _ => None,
            })
            .unwrap_or_else(|| self.config.driver.clone());
        let vbios = self
            .config
            .faults
            .iter()
            .rev()
            .find_map(|fault| match fault {
                Fault::Vbios(version) => Some(version.clone()),
                _ => None,
            })
            .unwrap_or_else(|| self.config.vbios.clone());
        let (mut driver, mut vbios, mut components) = (driver, vbios, BTreeMap::new());
        for (name, version) in self.flashed_versions() {
            match name.as_str() {
                "driver" => driver = version,
                "vbios" => vbios = version,
                _ => {
                    components.insert(name, version);
                }
            }
        }
        Ok(Inventory {
            nvml_version: format!("12.{driver}"),
            driver_version: driver,
            cuda_driver_version: "12.4".to_owned(),
            gpus: (0..self.config.n_gpus)
                .map(|gpu_idx| self.gpu_info(gpu_idx, &vbios))
                .collect(),
            components,
            gpu_source: GpuSourceKind::Simulated,
            hostname: self.hostname.clone(),
        })
    }

    fn sample(&self) -> Result<Sample, GpuError> {
        let mut state = self.lock();
        let sample = (0..self.config.n_gpus)
            .map(|gpu_idx| (gpu_idx, self.next_gpu_sample(&mut state, gpu_idx)))
            .collect();
        Ok(sample)
    }

    fn sample_gpu(&self, gpu_idx: u32) -> Result<BTreeMap<Field, f64>, GpuError> {
        if gpu_idx >= self.config.n_gpus {
            return Err(GpuError::NoSuchGpu { gpu_idx });
        }
        let stall = {
            let mut state = self.lock();
            match self.stall_fault() {
                Some((gpu, seconds)) if gpu == gpu_idx && state.loaded && !state.stall_fired => {
                    state.stall_fired = true;
                    Some(seconds)
                }
                _ => None,
            }
        };
        if let Some(seconds) = stall {
            // Hang without the state lock, as a wedged driver call would: the other GPUs'
            // workers keep sampling.
            std::thread::sleep(Duration::from_secs(u64::from(seconds)));
        }
        let mut state = self.lock();
        Ok(self.next_gpu_sample(&mut state, gpu_idx))
    }

    fn events(&self) -> Vec<GpuEvent> {
        std::mem::take(&mut self.lock().pending)
    }

    fn set_load(&self, loaded: bool) {
        let mut state = self.lock();
        if state.loaded && !loaded {
            state.unloaded_at = Some(crate::clock::now());
        }
        state.loaded = loaded;
    }
}

/// FNV-1a of the node name: the default seed, stable across runs and platforms.
pub fn seed_from_name(name: &str) -> u64 {
    name_hash(name)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64 over the inputs: a small, well-mixed, deterministic PRNG step.
fn mix(inputs: &[u64]) -> u64 {
    inputs.iter().fold(0x9e37_79b9_7f4a_7c15, |acc, &input| {
        let mut z = acc ^ input.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(node: &str, seed: Option<u64>, faults: Vec<Fault>) -> SimulatedSource {
        SimulatedSource::new(SimConfig {
            node: node.to_owned(),
            seed,
            n_gpus: 4,
            driver: "550.54.15".to_owned(),
            vbios: "96.00.89.00.01".to_owned(),
            faults,
        })
    }

    fn rounds(source: &SimulatedSource) -> Vec<Sample> {
        let mut out = Vec::new();
        for loaded in [false, false, true, true, true, false] {
            source.set_load(loaded);
            out.push(source.sample().expect("simulated samples never fail"));
        }
        out
    }

    fn field(sample: &Sample, gpu_idx: u32, field: Field) -> f64 {
        sample[gpu_idx as usize].1[&field]
    }

    #[test]
    fn same_name_and_seed_give_the_same_node() {
        let a = source("lab-a-n1", Some(7), vec![]);
        let b = source("lab-a-n1", Some(7), vec![]);
        assert_eq!(a.inventory().unwrap(), b.inventory().unwrap());
        assert_eq!(rounds(&a), rounds(&b));
        let other = source("lab-a-n1", Some(8), vec![]);
        assert_ne!(
            a.inventory().unwrap().gpus[0].uuid,
            other.inventory().unwrap().gpus[0].uuid
        );
        let derived = source("lab-a-n1", None, vec![]);
        assert_eq!(derived.seed(), seed_from_name("lab-a-n1"));
    }

    #[test]
    fn identifiers_are_distinct_and_well_formed() {
        let inventory = source("n1", Some(1), vec![]).inventory().unwrap();
        assert_eq!(inventory.gpu_source, GpuSourceKind::Simulated);
        assert_eq!(inventory.gpus.len(), 4);
        let uuids: std::collections::BTreeSet<_> =
            inventory.gpus.iter().map(|gpu| gpu.uuid.clone()).collect();
        assert_eq!(uuids.len(), 4);
        let uuid = &inventory.gpus[0].uuid;
        assert!(uuid.starts_with("GPU-") && uuid.len() == 40, "{uuid}");
        assert_eq!(inventory.gpus[0].pci_bus_id, "00000000:18:00.0");
        assert_eq!(inventory.gpus[0].name, SIM_GPU_NAME);
    }

    #[test]
    fn load_heats_the_gpus_and_idle_cools_them() {
        let samples = rounds(&source("n1", Some(3), vec![]));
        for gpu_idx in 0..4 {
            let idle = field(&samples[0], gpu_idx, Field::GpuTempC);
            let busy = field(&samples[3], gpu_idx, Field::GpuTempC);
            assert!((33.0..=37.0).contains(&idle), "idle {idle}");
            assert!((60.0..=75.0).contains(&busy), "busy {busy}");
            let power = field(&samples[3], gpu_idx, Field::PowerW);
            assert!((500.0..=650.0).contains(&power), "power {power}");
            assert_eq!(field(&samples[3], gpu_idx, Field::SmClockMhz), 1980.0);
        }
        assert!(!samples[0][0].1.contains_key(&Field::FanSpeedPct));
        let energy: Vec<f64> = samples
            .iter()
            .map(|s| field(s, 1, Field::EnergyMj))
            .collect();
        assert!(
            energy.windows(2).all(|pair| pair[0] < pair[1]),
            "{energy:?}"
        );
    }

    #[test]
    fn over_temp_heats_gpu_zero_under_load_only() {
        let samples = rounds(&source("n1", Some(3), vec![Fault::OverTemp]));
        let hot = field(&samples[2], 0, Field::GpuTempC);
        assert!((92.0..=96.0).contains(&hot), "{hot}");
        assert!(field(&samples[2], 1, Field::GpuTempC) < 80.0);
        assert!(field(&samples[0], 0, Field::GpuTempC) < 40.0);
        assert_ne!(field(&samples[2], 0, Field::ThrottleReasons), 0.0);
    }

    #[test]
    fn ecc_fault_raises_the_counter_and_one_event_under_load() {
        let sim = source("n1", Some(3), vec![Fault::EccUncorrected]);
        sim.sample().unwrap();
        assert!(sim.events().is_empty());
        sim.set_load(true);
        let sample = sim.sample().unwrap();
        assert!(field(&sample, 0, Field::EccUncorrectedVolatile) >= 1.0);
        assert_eq!(field(&sample, 1, Field::EccUncorrectedVolatile), 0.0);
        let events = sim.events();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind, events[0].gpu_index),
            (EventKind::EccUncorrected, 0)
        );
        sim.sample().unwrap();
        assert!(sim.events().is_empty(), "the event fires once");
    }

    #[test]
    fn xid_fault_fires_once_on_the_first_loaded_sample() {
        let sim = source("n1", Some(3), vec![Fault::Xid(79)]);
        sim.sample().unwrap();
        assert!(sim.events().is_empty(), "no XID while idle");
        sim.set_load(true);
        sim.sample().unwrap();
        let events = sim.events();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].kind, events[0].code), (EventKind::Xid, 79));
        assert_eq!(events[0].gpu_uuid, sim.inventory().unwrap().gpus[0].uuid);
        sim.sample().unwrap();
        sim.set_load(false);
        sim.set_load(true);
        sim.sample().unwrap();
        assert!(
            sim.events().is_empty(),
            "only the first loaded step sees it"
        );
    }

    #[test]
    fn idle_xid_fires_once_outside_a_step_after_one_ended() {
        let sim = source(
            "n1",
            Some(3),
            vec![Fault::IdleXid {
                code: 79,
                seconds: 0,
            }],
        );
        sim.sample().unwrap();
        assert!(sim.events().is_empty(), "not before a step loaded the GPUs");
        sim.set_load(true);
        sim.sample().unwrap();
        assert!(sim.events().is_empty(), "not while a step loads them");
        sim.set_load(false);
        sim.sample().unwrap();
        let events = sim.events();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].kind, events[0].code), (EventKind::Xid, 79));
        sim.set_load(true);
        sim.set_load(false);
        sim.sample().unwrap();
        assert!(sim.events().is_empty(), "it fires once");
        let later = source(
            "n1",
            Some(3),
            vec![Fault::IdleXid {
                code: 79,
                seconds: 3600,
            }],
        );
        later.set_load(true);
        later.set_load(false);
        later.sample().unwrap();
        assert!(
            later.events().is_empty(),
            "not before its time after the step"
        );
    }

    #[test]
    fn idle_hot_heats_every_idle_gpu_after_a_step_ended() {
        let hot = |seconds| {
            source(
                "n1",
                Some(3),
                vec![Fault::IdleHot {
                    degrees: 20,
                    seconds,
                }],
            )
        };
        let temps = |sim: &SimulatedSource| -> Vec<f64> {
            let sample = sim.sample().unwrap();
            (0..4)
                .map(|gpu| field(&sample, gpu, Field::GpuTempC))
                .collect()
        };
        let sim = hot(0);
        for temp in temps(&sim) {
            assert!((33.0..=37.0).contains(&temp), "not before a step: {temp}");
        }
        sim.set_load(true);
        for temp in temps(&sim) {
            assert!((60.0..=75.0).contains(&temp), "under load as usual: {temp}");
        }
        sim.set_load(false);
        for temp in temps(&sim) {
            assert!((53.0..=57.0).contains(&temp), "idle, 20 °C hotter: {temp}");
        }
        let later = hot(3600);
        later.set_load(true);
        later.set_load(false);
        for temp in temps(&later) {
            assert!((33.0..=37.0).contains(&temp), "not before its time: {temp}");
        }
    }

    #[test]
    fn version_faults_change_the_inventory() {
        let sim = source(
            "n1",
            Some(3),
            vec![
                Fault::Driver("535.129.03".into()),
                Fault::Vbios("96.00.74.00.01".into()),
            ],
        );
        let inventory = sim.inventory().unwrap();
        assert_eq!(inventory.driver_version, "535.129.03");
        assert!(
            inventory
                .gpus
                .iter()
                .all(|gpu| gpu.vbios_version == "96.00.74.00.01")
        );
    }

    #[test]
    fn faults_parse_or_say_why() {
        assert_eq!("over-temp".parse(), Ok(Fault::OverTemp));
        assert_eq!("ecc-uncorrected".parse(), Ok(Fault::EccUncorrected));
        assert_eq!("xid=79".parse(), Ok(Fault::Xid(79)));
        assert_eq!("driver=535.1".parse(), Ok(Fault::Driver("535.1".into())));
        assert_eq!("vbios=96.1".parse(), Ok(Fault::Vbios("96.1".into())));
        assert!(
            "xid=abc"
                .parse::<Fault>()
                .unwrap_err()
                .contains("positive integer")
        );
        assert!("driver=".parse::<Fault>().unwrap_err().contains("empty"));
        assert!(
            "melt"
                .parse::<Fault>()
                .unwrap_err()
                .contains("expected over-temp")
        );
        assert_eq!("stall=1:3".parse(), Ok(Fault::Stall { gpu: 1, seconds: 3 }));
        assert!(
            "stall=1"
                .parse::<Fault>()
                .unwrap_err()
                .contains("stall=GPU:SECONDS")
        );
        assert_eq!(
            "idle-xid=79:2".parse(),
            Ok(Fault::IdleXid {
                code: 79,
                seconds: 2
            })
        );
        for bad in ["idle-xid=79", "idle-xid=0:2", "idle-xid=79:x"] {
            assert!(
                bad.parse::<Fault>()
                    .unwrap_err()
                    .contains("idle-xid=CODE:SECONDS"),
                "{bad}"
            );
        }
        assert_eq!(
            "idle-hot=15:2".parse(),
            Ok(Fault::IdleHot {
                degrees: 15,
                seconds: 2
            })
        );
        for bad in [
            "idle-hot=15",
            "idle-hot=0:2",
            "idle-hot=-3:2",
            "idle-hot=15:x",
        ] {
            assert!(
                bad.parse::<Fault>()
                    .unwrap_err()
                    .contains("expected idle-hot=DEGREES:SECONDS"),
                "{bad}"
            );
        }
        assert!(
            "melt"
                .parse::<Fault>()
                .unwrap_err()
                .contains("idle-hot=DEGREES:SECONDS")
        );
        for text in [
            "over-temp",
            "xid=79",
            "idle-xid=79:0",
            "idle-hot=15:2",
            "driver=1.2",
            "stall=1:3",
        ] {
            assert_eq!(text.parse::<Fault>().unwrap().to_string(), text);
        }
    }
}
