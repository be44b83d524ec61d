//! NVML calls that nvml-wrapper 0.13 has no safe method for: remapped rows.
//!
//! This is the only module of the agent allowed to use `unsafe`. nvml-wrapper's generated
//! `nvml.lib().nvmlDevice...()` methods panic when the driver's library lacks the symbol (older
//! drivers do), so the raw function pointer is taken from the `Result`-returning field of the
//! loaded library instead, and its absence is reported as `FunctionNotFound` ("field absent").
#![allow(unsafe_code)]

use nvml_wrapper::error::{NvmlError, nvml_try};
use nvml_wrapper::{Device, Nvml};

/// Row-remapping state of one GPU (Ampere and later).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemappedRows {
    /// Rows remapped for correctable errors.
    pub correctable: u32,
    /// Rows remapped for uncorrectable errors.
    pub uncorrectable: u32,
    /// A remap is pending and needs a GPU reset.
    pub pending: bool,
    /// Remapping failed.
    pub failure: bool,
}

/// `nvmlDeviceGetRemappedRows` for `device`, which must come from `nvml`.
pub fn remapped_rows(nvml: &Nvml, device: &Device<'_>) -> Result<RemappedRows, NvmlError> {
    let symbol = nvml
        .lib()
        .nvmlDeviceGetRemappedRows
        .as_ref()
        .map_err(|_| NvmlError::FunctionNotFound)?;
    let (mut correctable, mut uncorrectable, mut pending, mut failure) = (0, 0, 0, 0);
    // SAFETY: the symbol was resolved from the loaded NVML library with the signature NVML's
    // header declares; the device handle is valid while `device` (which borrows `nvml`) lives,
    // and the four out-pointers point to live, writable `c_uint`s on this stack frame.
    let code = unsafe {
        symbol(
            device.handle(),
            &mut correctable,
            &mut uncorrectable,
            &mut pending,
            &mut failure,
        )
    };
    nvml_try(code)?;
    Ok(RemappedRows {
        correctable,
        uncorrectable,
        pending: pending != 0,
        failure: failure != 0,
    })
}
