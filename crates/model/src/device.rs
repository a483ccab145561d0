//! Choosing where the network runs.

use candle_core::Device;

use crate::{Error, Result};

/// Parses `auto`, `cpu`, `cuda` or `cuda:N`.
///
/// `auto` picks the first CUDA GPU when the crate was built with the `cuda` feature and one is
/// present, else the CPU. Asking for CUDA without the feature, or without a GPU, is an error that
/// says which.
pub fn parse_device(spec: &str) -> Result<Device> {
    let error = |message: &str| Error::Device {
        spec: spec.to_string(),
        message: message.to_string(),
    };
    match spec.trim().to_ascii_lowercase().as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if candle_core::utils::cuda_is_available() {
            Device::new_cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        other => {
            let ordinal = match other.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| error("expected `cuda` or `cuda:N` with N a GPU index"))?,
                None => return Err(error("expected `auto`, `cpu`, `cuda` or `cuda:N`")),
            };
            if !cfg!(feature = "cuda") {
                return Err(error(
                    "this build has no CUDA support; rebuild with the `cuda` feature of dexpression-model (see docs/gpu.md) or use the `cpu` device",
                ));
            }
            Device::new_cuda(ordinal)
                .map_err(|err| error(&format!("no usable CUDA GPU {ordinal}: {err}")))
        }
    }
}

/// A short human name for a device (`cpu`, `cuda:0`).
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        {
            let message = parse_device("cuda:0").unwrap_err().to_string();
            assert!(message.contains("`cuda` feature"), "{message}");
            assert!(
                !message.contains("--"),
                "names no command-line flag: {message}"
            );
            assert!(parse_device("auto").unwrap().is_cpu());
        }
    }
}
