#!/usr/bin/env python3
"""Compares what tollgate-agent read through NVML with what nvidia-smi reports.

Inputs: the agent's `--print-inventory` JSON, its `--print-samples N` JSON lines, and
`nvidia-smi -q -x` XML. Identity (UUID, serial, VBIOS, driver version, PCI bus id) must match
exactly; temperature within 5 °C and power within 15 % or 30 W (whichever is larger), taken
against the agent sample closest in value (readings move between the two reads). Prints a
table; exits 1 on any mismatch, 2 on unusable input. Standard library only.
"""

import json
import sys
import xml.etree.ElementTree as ET

TEMP_TOLERANCE_C = 5.0
POWER_TOLERANCE_FRACTION = 0.15
POWER_TOLERANCE_W = 30.0


def text(node, path):
    """Stripped text at `path` under `node`, or None when absent or N/A."""
    found = node.find(path)
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    if value in ("", "N/A", "[N/A]", "Not Supported", "[Not Supported]"):
        return None
    return value


def number(value):
    """The leading number of '35 C' or '70.12 W'; None when absent."""
    if value is None:
        return None
    try:
        return float(value.split()[0])
    except (ValueError, IndexError):
        return None


def smi_gpus(xml_text):
    root = ET.fromstring(xml_text)
    driver = text(root, "driver_version")
    gpus = []
    for gpu in root.findall("gpu"):
        power = None
        for path in (
            "gpu_power_readings/power_draw",
            "gpu_power_readings/instant_power_draw",
            "power_readings/power_draw",
        ):
            power = number(text(gpu, path))
            if power is not None:
                break
        gpus.append(
            {
                "uuid": text(gpu, "uuid"),
                "serial": text(gpu, "serial"),
                "vbios_version": text(gpu, "vbios_version"),
                "pci_bus_id": text(gpu, "pci/pci_bus_id") or gpu.get("id"),
                "temp_c": number(text(gpu, "temperature/gpu_temp")),
                "power_w": power,
            }
        )
    return driver, gpus


def norm_bus(bus_id):
    # NVML and nvidia-smi both print 8-digit domains; hex case is the only known variation.
    return bus_id.upper() if bus_id else bus_id


def compare(inventory, sample_lines, xml_text):
    """Returns (rows, ok): rows of (gpu, check, agent, nvidia-smi, verdict)."""
    driver, smi = smi_gpus(xml_text)
    rows = []
    ok = True

    def row(gpu, check, agent, reference, good):
        nonlocal ok
        ok = ok and good
        rows.append((gpu, check, str(agent), str(reference), "ok" if good else "MISMATCH"))

    row("-", "driver_version", inventory.get("driver_version"), driver,
        inventory.get("driver_version") == driver)
    row("-", "gpu count", len(inventory.get("gpus", [])), len(smi),
        len(inventory.get("gpus", [])) == len(smi))
    samples = {}
    for line in sample_lines:
        line = line.strip()
        if not line:
            continue
        for gpu in json.loads(line).get("gpus", []):
            values = gpu.get("values") or {}
            samples.setdefault(gpu.get("uuid"), []).append(values)
    by_uuid = {gpu["uuid"]: gpu for gpu in smi}
    for agent_gpu in inventory.get("gpus", []):
        uuid = agent_gpu.get("uuid")
        label = str(agent_gpu.get("index"))
        reference = by_uuid.get(uuid)
        if reference is None:
            row(label, "uuid", uuid, "(absent)", False)
            continue
        row(label, "uuid", uuid, reference["uuid"], True)
        row(label, "serial", agent_gpu.get("serial"), reference["serial"],
            agent_gpu.get("serial") == reference["serial"])
        row(label, "vbios_version", agent_gpu.get("vbios_version"), reference["vbios_version"],
            agent_gpu.get("vbios_version") == reference["vbios_version"])
        row(label, "pci_bus_id", agent_gpu.get("pci_bus_id"), reference["pci_bus_id"],
            norm_bus(agent_gpu.get("pci_bus_id")) == norm_bus(reference["pci_bus_id"]))
        gpu_samples = samples.get(uuid, [])
        for field, key, allowed in (
            ("gpu_temp_c", "temp_c", lambda ref: TEMP_TOLERANCE_C),
            ("power_w", "power_w",
             lambda ref: max(POWER_TOLERANCE_W, POWER_TOLERANCE_FRACTION * ref)),
        ):
            ref = reference[key]
            values = [s[field] for s in gpu_samples if isinstance(s.get(field), (int, float))]
            if ref is None and not values:
                row(label, field, "(absent)", "(absent)", True)
                continue
            if ref is None or not values:
                row(label, field, values[-1] if values else "(absent)",
                    ref if ref is not None else "(absent)", False)
                continue
            closest = min(values, key=lambda v: abs(v - ref))
            row(label, field, f"{closest:g}", f"{ref:g} (±{allowed(ref):g})",
                abs(closest - ref) <= allowed(ref))
    return rows, ok


def print_table(rows):
    header = ("gpu", "check", "agent (NVML)", "nvidia-smi", "verdict")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(5)]
    for r in [header] + rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())


def main(argv):
    if len(argv) != 4:
        print("usage: nvml-check-compare.py INVENTORY.json SAMPLES.jsonl NVIDIA-SMI.xml",
              file=sys.stderr)
        return 2
    try:
        with open(argv[1]) as f:
            inventory = json.load(f)
        with open(argv[2]) as f:
            sample_lines = f.readlines()
        with open(argv[3]) as f:
            xml_text = f.read()
        rows, ok = compare(inventory, sample_lines, xml_text)
    except (OSError, ValueError, ET.ParseError) as error:
        print(f"nvml-check: unusable input: {error}", file=sys.stderr)
        return 2
    print_table(rows)
    print("nvml-check: " + ("all checks agree" if ok else "MISMATCH: NVML and nvidia-smi disagree"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
