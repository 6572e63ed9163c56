//! `.npy` files ⇄ [`TensorData`] (float32, float64, int64, int32, bool), through the npyz crate.

use std::io::Write;
use std::path::Path;

use burn_backend::TensorData;
use npyz::WriterBuilder;

use crate::error::{Result, bail, err};

/// Reads a C-order `.npy` file. Floats become f32, integers i64.
pub fn read(path: &Path) -> Result<TensorData> {
    let bytes = std::fs::read(path).map_err(|e| err!(Io, "{}: {e}", path.display()))?;
    let bad = |e: std::io::Error| err!(Decode, "{}: not a readable .npy file: {e}", path.display());
    let file = npyz::NpyFile::new(&bytes[..]).map_err(bad)?;
    if file.order() != npyz::Order::C {
        bail!(Decode, "{}: Fortran-order arrays are not supported", path.display());
    }
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    let descr = match file.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        other => bail!(Decode, "{}: unsupported dtype {other:?}", path.display()),
    };
    Ok(match descr.trim_start_matches(['<', '|', '=']) {
        "f4" => TensorData::new(file.into_vec::<f32>().map_err(bad)?, shape),
        "f8" => TensorData::new(file.into_vec::<f64>().map_err(bad)?.into_iter().map(|x| x as f32).collect::<Vec<_>>(), shape),
        "i8" => TensorData::new(file.into_vec::<i64>().map_err(bad)?, shape),
        "i4" => TensorData::new(file.into_vec::<i32>().map_err(bad)?.into_iter().map(i64::from).collect::<Vec<_>>(), shape),
        "b1" => TensorData::new(file.into_vec::<bool>().map_err(bad)?, shape),
        other => bail!(Decode, "{}: unsupported dtype '{other}'", path.display()),
    })
}

/// Writes `data` as a C-order `.npy` file (f32, i64 or bool).
pub fn write(path: &Path, data: &TensorData) -> Result<()> {
    let io = |e: std::io::Error| err!(Io, "{}: {e}", path.display());
    let shape: Vec<u64> = data.shape().iter().map(|&d| d as u64).collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    match crate::tensor::kind_of(data.dtype()) {
        crate::tensor::Kind::Float => {
            let v = data.clone().convert_dtype(burn_backend::DType::F32);
            let v = v.as_slice::<f32>().map_err(|e| err!(Io, "{e:?}"))?;
            let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut out).begin_nd().map_err(io)?;
            w.extend(v.iter().copied()).map_err(io)?;
            w.finish().map_err(io)?;
        }
        crate::tensor::Kind::Int => {
            let v = data.clone().convert_dtype(burn_backend::DType::I64);
            let v = v.as_slice::<i64>().map_err(|e| err!(Io, "{e:?}"))?;
            let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut out).begin_nd().map_err(io)?;
            w.extend(v.iter().copied()).map_err(io)?;
            w.finish().map_err(io)?;
        }
        crate::tensor::Kind::Bool => {
            let v = data.try_to_vec::<bool>().map_err(|e| err!(Io, "{e:?}"))?;
            let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut out).begin_nd().map_err(io)?;
            w.extend(v.into_iter()).map_err(io)?;
            w.finish().map_err(io)?;
        }
    }
    out.flush().map_err(io)
}
