//! Real GPUs through NVML (nvml-wrapper, which dlopens `libnvidia-ml.so.1` at run time, so the
//! agent builds and starts on machines without a driver and says clearly what is missing).
//!
//! `Nvml` is owned in an `Arc` because every `Device` borrows it; critical events come from an
//! NVML event set waited on by a dedicated thread, since `EventSet::wait` blocks.

use super::{GpuError, GpuSource, Sample};
use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, ClockId, EccCounter, MemoryError, RetirementCause, TemperatureSensor,
};
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::NVML_FI_DEV_MEMORY_TEMP;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_domain::fleet::{GpuInfo, GpuSourceKind, Inventory};
use tollgate_domain::telemetry::{EventKind, Field, GpuEvent};

/// How long one `EventSet::wait` blocks before the thread checks whether to stop.
const EVENT_WAIT: Duration = Duration::from_millis(500);

/// Real GPUs. Dropping the source stops its event thread.
pub struct NvmlSource {
    nvml: Arc<Nvml>,
    events: Mutex<mpsc::Receiver<GpuEvent>>,
    /// Events the sampler synthesized (GPU lost), waiting to be drained with the others.
    local_events: Mutex<Vec<GpuEvent>>,
    /// GPUs already reported lost, so the event is raised once per GPU.
    lost: Mutex<BTreeSet<u32>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for NvmlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSource").finish_non_exhaustive()
    }
}

impl NvmlSource {
    /// Loads NVML and starts watching for critical events. Fails with a message a person can
    /// act on when the driver is missing, not loaded, forbidden or mismatched.
    pub fn new() -> Result<Self, GpuError> {
        let nvml = Arc::new(Nvml::init().map_err(init_error)?);
        let (sender, receiver) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_nvml = Arc::clone(&nvml);
        let thread_stop = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("nvml-events".to_owned())
            .spawn(move || watch_events(&thread_nvml, &sender, &thread_stop));
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the NVML event thread; XID events will not be seen");
        }
        Ok(Self {
            nvml,
            events: Mutex::new(receiver),
            local_events: Mutex::new(Vec::new()),
            lost: Mutex::new(BTreeSet::new()),
            stop,
        })
    }

    fn mark_lost(&self, gpu_idx: u32, uuid: String) {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        if lost.insert(gpu_idx) {
            tracing::error!(gpu_idx, %uuid, "GPU fell off the bus (NVML GpuLost)");
            self.local_events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(GpuEvent {
                    gpu_index: gpu_idx,
                    gpu_uuid: uuid,
                    kind: EventKind::GpuLost,
                    code: 0,
                    at: crate::clock::now(),
                    detail: "NVML reported GpuLost".to_owned(),
                });
        }
    }
}

impl Drop for NvmlSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Maps `Nvml::init` failures to the messages an operator needs.
fn init_error(error: NvmlError) -> GpuError {
    match error {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => GpuError::NoDriver,
        NvmlError::DriverNotLoaded => GpuError::DriverNotLoaded,
        NvmlError::NoPermission => GpuError::NoPermission,
        NvmlError::LibRmVersionMismatch => GpuError::VersionMismatch,
        source => GpuError::Nvml {
            what: "initialization".to_owned(),
            source,
        },
    }
}

/// A single optional query: "not supported here" is an absent value, not a failure.
fn optional<T>(result: Result<T, NvmlError>) -> Result<Option<T>, NvmlError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(NvmlError::NotSupported | NvmlError::NoPermission | NvmlError::FunctionNotFound) => {
            Ok(None)
        }
        // Older drivers lack some symbols; the wrapper reports that as a failed symbol load.
        Err(NvmlError::FailedToLoadSymbol(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

fn nvml_error(what: impl Into<String>) -> impl FnOnce(NvmlError) -> GpuError {
    let what = what.into();
    move |source| GpuError::Nvml { what, source }
}

impl GpuSource for NvmlSource {
    fn kind(&self) -> GpuSourceKind {
        GpuSourceKind::Nvml
    }

    fn inventory(&self) -> Result<Inventory, GpuError> {
        let nvml = &self.nvml;
        let driver_version = nvml
            .sys_driver_version()
            .map_err(nvml_error("reading the driver version"))?;
        let cuda_driver_version = optional(nvml.sys_cuda_driver_version())
            .map_err(nvml_error("reading the CUDA driver version"))?
            .map(|v| {
                format!(
                    "{}.{}",
                    nvml_wrapper::cuda_driver_version_major(v),
                    nvml_wrapper::cuda_driver_version_minor(v)
                )
            })
            .unwrap_or_default();
        let nvml_version = optional(nvml.sys_nvml_version())
            .map_err(nvml_error("reading the NVML version"))?
            .unwrap_or_default();
        let n_gpus = nvml.device_count().map_err(nvml_error("counting GPUs"))?;
        let mut gpus = Vec::new();
        for gpu_idx in 0..n_gpus {
            let at = |what: &str| format!("{what} of GPU {gpu_idx}");
            let device = nvml
                .device_by_index(gpu_idx)
                .map_err(nvml_error(at("opening")))?;
            let uuid = device.uuid().map_err(nvml_error(at("reading the UUID")))?;
            let name = device.name().map_err(nvml_error(at("reading the name")))?;
            let pci_bus_id = device
                .pci_info()
                .map_err(nvml_error(at("reading the PCI info")))?
                .bus_id;
            let vbios_version = device
                .vbios_version()
                .map_err(nvml_error(at("reading the VBIOS version")))?;
            let memory_total_mib = device
                .memory_info()
                .map_err(nvml_error(at("reading memory info")))?
                .total
                / (1024 * 1024);
            let opt = |what: &str| nvml_error(at(what));
            gpus.push(GpuInfo {
                index: gpu_idx,
                uuid,
                name,
                serial: optional(device.serial()).map_err(opt("reading the serial"))?,
                board_part_number: optional(device.board_part_number())
                    .map_err(opt("reading the board part number"))?,
                pci_bus_id,
                vbios_version,
                inforom_version: optional(device.info_rom_image_version())
                    .map_err(opt("reading the InfoROM version"))?,
                memory_total_mib,
                ecc_enabled: optional(device.is_ecc_enabled())
                    .map_err(opt("reading the ECC mode"))?
                    .map(|mode| mode.currently_enabled),
                power_limit_w: optional(device.enforced_power_limit())
                    .map_err(opt("reading the power limit"))?
                    .map(|mw| f64::from(mw) / 1000.0),
                max_pcie_gen: optional(device.max_pcie_link_gen())
                    .map_err(opt("reading the max PCIe generation"))?,
                max_pcie_width: optional(device.max_pcie_link_width())
                    .map_err(opt("reading the max PCIe width"))?,
            });
        }
        Ok(Inventory {
            driver_version,
            cuda_driver_version,
            nvml_version,
            gpus,
            components: BTreeMap::new(),
            gpu_source: GpuSourceKind::Nvml,
            hostname: super::hostname(),
        })
    }

    fn sample(&self) -> Result<Sample, GpuError> {
        let n_gpus = self
            .nvml
            .device_count()
            .map_err(nvml_error("counting GPUs"))?;
        let mut sample = Vec::new();
        for gpu_idx in 0..n_gpus {
            match sample_device(&self.nvml, gpu_idx) {
                Ok(values) => sample.push((gpu_idx, values)),
                Err(NvmlError::GpuLost) => {
                    let uuid = self
                        .nvml
                        .device_by_index(gpu_idx)
                        .and_then(|device| device.uuid())
                        .unwrap_or_default();
                    self.mark_lost(gpu_idx, uuid);
                }
                Err(error) => {
                    // The round misses this GPU; the sampler counts it.
                    tracing::debug!(gpu_idx, %error, "NVML sample failed");
                }
            }
        }
        Ok(sample)
    }

    fn sample_gpu(&self, gpu_idx: u32) -> Result<BTreeMap<Field, f64>, GpuError> {
        match sample_device(&self.nvml, gpu_idx) {
            Ok(values) => Ok(values),
            Err(NvmlError::GpuLost) => {
                let uuid = self
                    .nvml
                    .device_by_index(gpu_idx)
                    .and_then(|device| device.uuid())
                    .unwrap_or_default();
                self.mark_lost(gpu_idx, uuid);
                Err(GpuError::GpuLost { gpu_idx })
            }
            Err(source) => Err(GpuError::Nvml {
                what: format!("sampling GPU {gpu_idx}"),
                source,
            }),
        }
    }

    fn events(&self) -> Vec<GpuEvent> {
        let mut events =
            std::mem::take(&mut *self.local_events.lock().unwrap_or_else(|p| p.into_inner()));
        let receiver = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.extend(receiver.try_iter());
        events
    }
}

/// One GPU's telemetry. Fields the GPU does not support stay absent; `GpuLost` and other real
/// failures end the GPU's round with an error.
///
/// Long because it is the list of fields, one NVML query each, read in one pass over one
/// device handle; splitting it would only scatter that list.
fn sample_device(nvml: &Nvml, gpu_idx: u32) -> Result<BTreeMap<Field, f64>, NvmlError> {
    let device = nvml.device_by_index(gpu_idx)?;
    let mut values = BTreeMap::new();
    let mut put = |field: Field, value: Option<f64>| {
        if let Some(value) = value {
            values.insert(field, value);
        }
    };
    put(
        Field::GpuTempC,
        optional(device.temperature(TemperatureSensor::Gpu))?.map(f64::from),
    );
    put(Field::MemTempC, memory_temperature(&device));
    put(
        Field::PowerW,
        optional(device.power_usage())?.map(|mw| f64::from(mw) / 1000.0),
    );
    put(
        Field::EnergyMj,
        optional(device.total_energy_consumption())?.map(|mj| mj as f64),
    );
    put(
        Field::SmClockMhz,
        optional(device.clock(Clock::SM, ClockId::Current))?.map(f64::from),
    );
    put(
        Field::MemClockMhz,
        optional(device.clock(Clock::Memory, ClockId::Current))?.map(f64::from),
    );
    if let Some(utilization) = optional(device.utilization_rates())? {
        put(Field::GpuUtilPct, Some(f64::from(utilization.gpu)));
        put(Field::MemUtilPct, Some(f64::from(utilization.memory)));
    }
    put(
        Field::FbUsedMib,
        optional(device.memory_info())?.map(|info| (info.used / (1024 * 1024)) as f64),
    );
    for (field, error_type, counter) in [
        (
            Field::EccCorrectedVolatile,
            MemoryError::Corrected,
            EccCounter::Volatile,
        ),
        (
            Field::EccUncorrectedVolatile,
            MemoryError::Uncorrected,
            EccCounter::Volatile,
        ),
        (
            Field::EccCorrectedAggregate,
            MemoryError::Corrected,
            EccCounter::Aggregate,
        ),
        (
            Field::EccUncorrectedAggregate,
            MemoryError::Uncorrected,
            EccCounter::Aggregate,
        ),
    ] {
        put(
            field,
            optional(device.total_ecc_errors(error_type, counter))?.map(|n| n as f64),
        );
    }
    if let Some(rows) = optional(super::nvml_raw::remapped_rows(nvml, &device))? {
        put(
            Field::RowRemapCorrectable,
            Some(f64::from(rows.correctable)),
        );
        put(
            Field::RowRemapUncorrectable,
            Some(f64::from(rows.uncorrectable)),
        );
        put(
            Field::RowRemapPending,
            Some(f64::from(u8::from(rows.pending))),
        );
        put(
            Field::RowRemapFailure,
            Some(f64::from(u8::from(rows.failure))),
        );
    }
    // Pre-Ampere GPUs retire pages; Ampere and later answer NotSupported (they remap rows).
    for (field, cause) in [
        (
            Field::RetiredPagesSbe,
            RetirementCause::MultipleSingleBitEccErrors,
        ),
        (Field::RetiredPagesDbe, RetirementCause::DoubleBitEccError),
    ] {
        put(
            field,
            optional(device.retired_pages(cause))?.map(|pages| pages.len() as f64),
        );
    }
    // nvml-wrapper reads these through the deprecated clocks-throttle symbol; newer drivers
    // call them clock event reasons, with the same bits.
    put(
        Field::ThrottleReasons,
        optional(device.current_throttle_reasons())?.map(|reasons| reasons.bits() as f64),
    );
    put(
        Field::PcieReplay,
        optional(device.pcie_replay_counter())?.map(f64::from),
    );
    put(
        Field::PcieLinkGen,
        optional(device.current_pcie_link_gen())?.map(f64::from),
    );
    put(
        Field::PcieLinkWidth,
        optional(device.current_pcie_link_width())?.map(f64::from),
    );
    // Fan 0 stands for the board; passively cooled data-center cards report NotSupported.
    put(
        Field::FanSpeedPct,
        optional(device.fan_speed(0))?.map(f64::from),
    );
    Ok(values)
}

/// HBM temperature through NVML's field-value API; absent when the GPU does not report it.
fn memory_temperature(device: &nvml_wrapper::Device<'_>) -> Option<f64> {
    let samples = device
        .field_values_for(&[FieldId(NVML_FI_DEV_MEMORY_TEMP)])
        .ok()?;
    let value = samples.into_iter().next()?.ok()?.value.ok()?;
    let celsius = match value {
        SampleValue::F64(v) => v,
        SampleValue::U32(v) => f64::from(v),
        SampleValue::U64(v) => v as f64,
        SampleValue::I64(v) => v as f64,
    };
    // Some boards answer 0 for "no sensor" instead of NotSupported.
    (celsius > 0.0).then_some(celsius)
}

/// Waits for XID and double-bit ECC events until `stop` is set, forwarding them to `sender`.
/// Runs on its own thread because `EventSet::wait` blocks. Registration and the wait loop stay
/// together because the event set they share borrows `nvml` and cannot be handed around
/// (hence its length).
fn watch_events(nvml: &Nvml, sender: &mpsc::Sender<GpuEvent>, stop: &AtomicBool) {
    let mut set = match nvml.create_event_set() {
        Ok(set) => set,
        Err(error) => {
            tracing::warn!(%error, "NVML event sets are not available; XID events will not be seen");
            return;
        }
    };
    let n_gpus = nvml.device_count().unwrap_or(0);
    let mut registered = 0;
    for gpu_idx in 0..n_gpus {
        let Ok(device) = nvml.device_by_index(gpu_idx) else {
            continue;
        };
        let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
        let types = device
            .supported_event_types()
            .map(|supported| supported & wanted)
            .unwrap_or(EventTypes::empty());
        if types.is_empty() {
            continue;
        }
        // `register_events` consumes the set and hands it back on success; on failure it
        // releases the set, so a fresh one is needed for the remaining GPUs.
        set = match device.register_events(types, set) {
            Ok(set) => {
                registered += 1;
                set
            }
            Err(error) => {
                tracing::warn!(gpu_idx, error = %error.error, "could not register for NVML events on this GPU");
                match nvml.create_event_set() {
                    Ok(set) => set,
                    Err(_) => return,
                }
            }
        };
    }
    if registered == 0 {
        tracing::warn!("no GPU supports NVML event registration; XID events will not be seen");
        return;
    }
    let timeout_ms = u32::try_from(EVENT_WAIT.as_millis()).unwrap_or(500);
    while !stop.load(Ordering::Relaxed) {
        match set.wait(timeout_ms) {
            Ok(data) => {
                let gpu_index = data.device.index().unwrap_or(u32::MAX);
                let gpu_uuid = data.device.uuid().unwrap_or_default();
                let (kind, code, detail) =
                    if data.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                        match data.event_data {
                            Some(XidError::Value(code)) => (
                                EventKind::Xid,
                                i64::try_from(code).unwrap_or(i64::MAX),
                                format!("XID {code}"),
                            ),
                            _ => (EventKind::Xid, 999, "XID of unknown code".to_owned()),
                        }
                    } else {
                        (
                            EventKind::EccUncorrected,
                            1,
                            "double-bit ECC error event".to_owned(),
                        )
                    };
                tracing::warn!(gpu_index, %gpu_uuid, kind = %kind, code, "GPU event");
                let event = GpuEvent {
                    gpu_index,
                    gpu_uuid,
                    kind,
                    code,
                    at: crate::clock::now(),
                    detail,
                };
                if sender.send(event).is_err() {
                    return;
                }
            }
            Err(NvmlError::Timeout) => {}
            Err(error) => {
                tracing::warn!(%error, "waiting for NVML events failed; retrying");
                std::thread::sleep(EVENT_WAIT);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without the NVIDIA driver (every CI machine), starting NVML must fail with
    /// the message that tells the operator what to do, never panic.
    #[test]
    fn without_a_driver_nvml_says_so_clearly() {
        match NvmlSource::new() {
            Err(GpuError::NoDriver) => {
                let message = GpuError::NoDriver.to_string();
                assert_eq!(
                    message,
                    "no NVIDIA driver found: libnvidia-ml.so.1 could not be loaded (install the \
                     NVIDIA driver, or run with --gpus sim:N for simulated GPUs)"
                );
            }
            Err(other) => {
                // A machine with the library but a broken driver still gets a clear message.
                let message = other.to_string();
                assert!(!message.is_empty());
                eprintln!("NVML present but unusable here: {message}");
            }
            Ok(source) => {
                eprintln!(
                    "skipped the no-driver assertion: this machine has a working NVIDIA driver"
                );
                let inventory = source.inventory().expect("inventory on a GPU machine");
                assert_eq!(inventory.gpu_source, GpuSourceKind::Nvml);
                let sample = source.sample().expect("sample on a GPU machine");
                assert_eq!(sample.len(), inventory.gpus.len());
            }
        }
    }

    #[test]
    fn init_errors_get_their_own_messages() {
        assert!(matches!(
            init_error(NvmlError::DriverNotLoaded),
            GpuError::DriverNotLoaded
        ));
        assert!(matches!(
            init_error(NvmlError::NoPermission),
            GpuError::NoPermission
        ));
        let mismatch = init_error(NvmlError::LibRmVersionMismatch).to_string();
        assert!(mismatch.contains("reboot the node"), "{mismatch}");
        assert!(matches!(
            init_error(NvmlError::LibraryNotFound),
            GpuError::NoDriver
        ));
    }

    #[test]
    fn unsupported_queries_are_absent_not_errors() {
        assert!(matches!(
            optional::<u32>(Err(NvmlError::NotSupported)),
            Ok(None)
        ));
        assert!(matches!(
            optional::<u32>(Err(NvmlError::NoPermission)),
            Ok(None)
        ));
        assert!(matches!(
            optional::<u32>(Err(NvmlError::FunctionNotFound)),
            Ok(None)
        ));
        assert!(matches!(
            optional::<u32>(Err(NvmlError::GpuLost)),
            Err(NvmlError::GpuLost)
        ));
    }
}
