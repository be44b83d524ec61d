//! The Prometheus text exposition format (0.0.4) that both daemons' `/metrics` write: families
//! with `# HELP` and `# TYPE`, escaped label values, and the GPU families under dcgm-exporter's
//! names and labels, so that a site's dcgm-exporter dashboards read Tollgate's numbers unchanged.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use tollgate_domain::telemetry::Field;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A `/metrics` answer being written.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    /// Continues after what `out` already holds (another renderer's families).
    pub fn after(out: String) -> Self {
        Self { out }
    }

    /// Starts a family: its HELP and TYPE lines. Its samples follow, before the next family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(value));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The text written.
    pub fn finish(self) -> String {
        self.out
    }
}

fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{value}");
    }
}

fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

fn escape_help(help: &str) -> std::borrow::Cow<'_, str> {
    if !help.contains(['\\', '\n']) {
        return help.into();
    }
    help.replace('\\', "\\\\").replace('\n', "\\n").into()
}

/// One GPU and its latest values, for [`write_gpu_families`].
#[derive(Debug, Clone, Copy)]
pub struct GpuSeries<'a> {
    /// NVML index: dcgm-exporter's `gpu` label, and `device="nvidia<index>"`.
    pub index: u32,
    /// `UUID`.
    pub uuid: &'a str,
    /// `pci_bus_id`, as NVML writes it (`00000000:18:00.0`).
    pub pci_bus_id: &'a str,
    /// `modelName`: the product name.
    pub model_name: &'a str,
    /// `Hostname`: the Tollgate node name.
    pub hostname: &'a str,
    /// `DCGM_FI_DRIVER_VERSION`, which dcgm-exporter adds as a label (its default counters
    /// list the field with type `label`).
    pub driver_version: &'a str,
    /// A simulated GPU: its samples carry `simulated="true"` as well.
    pub simulated: bool,
    /// The latest value of each field the GPU reported.
    pub values: &'a BTreeMap<Field, f64>,
}

/// Writes one family per telemetry field that any of `gpus` reported (see
/// [`Field::exported`] for names, types and HELP), with dcgm-exporter's labels in its order:
/// `gpu`, `UUID`, `pci_bus_id`, `device`, `modelName`, `Hostname`, `DCGM_FI_DRIVER_VERSION`;
/// simulated GPUs add `simulated="true"`.
pub fn write_gpu_families(text: &mut Text, gpus: &[GpuSeries<'_>]) {
    let mut index = String::new();
    let mut device = String::new();
    for field in Field::ALL {
        if !gpus.iter().any(|gpu| gpu.values.contains_key(&field)) {
            continue;
        }
        let exported = field.exported();
        text.family(&exported.name, exported.kind.as_str(), exported.help);
        for gpu in gpus {
            let Some(value) = gpu.values.get(&field) else {
                continue;
            };
            index.clear();
            let _ = write!(index, "{}", gpu.index);
            device.clear();
            let _ = write!(device, "nvidia{}", gpu.index);
            let labels = [
                ("gpu", index.as_str()),
                ("UUID", gpu.uuid),
                ("pci_bus_id", gpu.pci_bus_id),
                ("device", device.as_str()),
                ("modelName", gpu.model_name),
                ("Hostname", gpu.hostname),
                ("DCGM_FI_DRIVER_VERSION", gpu.driver_version),
                ("simulated", "true"),
            ];
            let n_labels = if gpu.simulated { 8 } else { 7 };
            text.sample(&exported.name, &labels[..n_labels], *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_values_written_as_prometheus_reads_them() {
        let mut text = Text::default();
        text.family("x", "gauge", "line one\nline two");
        text.sample("x", &[("a", "q\"b\\c\nd")], 1.5);
        text.sample("x", &[], f64::INFINITY);
        text.sample("x", &[], 3.0);
        assert_eq!(
            text.finish(),
            "# HELP x line one\\nline two\n# TYPE x gauge\nx{a=\"q\\\"b\\\\c\\nd\"} 1.5\nx +Inf\nx 3\n"
        );
    }

    #[test]
    fn gpu_families_carry_dcgm_exporter_labels_and_only_reported_fields() {
        let values: BTreeMap<Field, f64> =
            [(Field::GpuTempC, 41.0), (Field::FanSpeedPct, 30.0)].into();
        let gpu = GpuSeries {
            index: 1,
            uuid: "GPU-1",
            pci_bus_id: "00000000:19:00.0",
            model_name: "NVIDIA H100 80GB HBM3",
            hostname: "node-a",
            driver_version: "550.54.15",
            simulated: true,
            values: &values,
        };
        let mut text = Text::default();
        write_gpu_families(&mut text, &[gpu]);
        let text = text.finish();
        assert!(text.contains(
            "DCGM_FI_DEV_GPU_TEMP{gpu=\"1\",UUID=\"GPU-1\",pci_bus_id=\"00000000:19:00.0\",\
             device=\"nvidia1\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"node-a\",\
             DCGM_FI_DRIVER_VERSION=\"550.54.15\",simulated=\"true\"} 41\n"
        ));
        assert!(text.contains("# TYPE tollgate_gpu_fan_speed_pct gauge\n"));
        assert!(!text.contains("POWER_USAGE"), "not reported, not written");
    }
}
