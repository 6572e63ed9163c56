//! Output buffers of Kiln's CPU kernels, on 64-byte boundaries. glibc aligns its blocks to 16
//! bytes, so three in four 64-byte vector loads of a plane crossed two cache lines, which on Zen 4
//! costs twice a load in one: the stride-2 depthwise convs read their planes a fifth to a third
//! slower from such buffers. The buffer becomes a tensor's bytes without a copy.

use std::alloc::Layout;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use burn_backend::{DType, TensorData};
use burn_std::{AccessError, AccessPolicy, AllocationController, AllocationProperty, Bytes};

const ALIGN: usize = 64;

fn layout(floats: usize) -> Layout {
    // A zero-size allocation is not allowed: an empty buffer still takes one float.
    Layout::from_size_align(floats.max(1) * size_of::<f32>(), ALIGN).unwrap_or_else(|_| std::alloc::handle_alloc_error(Layout::new::<f32>()))
}

/// `len` floats on a 64-byte boundary.
pub struct AlignedBuf {
    ptr: NonNull<f32>,
    len: usize,
}

// SAFETY: the buffer owns its allocation, as a `Vec<f32>` does.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// # Safety
    /// The caller writes every element before any is read.
    pub unsafe fn uninit(len: usize) -> Self {
        let layout = layout(len);
        // SAFETY: the layout's size is non-zero.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) }.cast::<f32>()).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    /// The buffer as a tensor's data of `shape` (whose elements it holds), without a copy.
    pub fn into_data(self, shape: Vec<usize>) -> TensorData {
        let buf = std::mem::ManuallyDrop::new(self);
        let bytes = buf.len * size_of::<f32>();
        let controller = Controller { ptr: buf.ptr.cast(), floats: buf.len };
        // SAFETY: the controller owns the buffer's `bytes` initialised bytes (the caller of
        // `uninit` wrote them all).
        let bytes = unsafe { Bytes::from_controller(Box::new(controller), bytes) };
        TensorData::from_bytes(bytes, shape, DType::F32)
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `len` floats from `ptr`, owned by the buffer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as above, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `uninit` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout(self.len)) };
    }
}

/// Hands an [`AlignedBuf`]'s allocation to Burn's `Bytes`, which frees it through this.
struct Controller {
    ptr: NonNull<u8>,
    floats: usize,
}

impl AllocationController for Controller {
    fn alloc_align(&self) -> usize {
        ALIGN
    }

    fn property(&self) -> AllocationProperty {
        AllocationProperty::Other
    }

    fn memory(&self, _policy: AccessPolicy) -> Result<&[MaybeUninit<u8>], AccessError> {
        // SAFETY: the allocation holds `floats` floats.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.floats * size_of::<f32>()) })
    }

    unsafe fn memory_mut(&mut self, _policy: AccessPolicy) -> Result<&mut [MaybeUninit<u8>], AccessError> {
        // SAFETY: as above; the caller writes only initialised bytes.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast(), self.floats * size_of::<f32>()) })
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // SAFETY: allocated by `AlignedBuf::uninit` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout(self.floats)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_become_tensor_data_intact() {
        for len in [0, 1, 17, 4099] {
            // SAFETY: every element is written below.
            let mut buf = unsafe { AlignedBuf::uninit(len) };
            assert_eq!(buf.as_ptr() as usize % ALIGN, 0);
            buf.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
            let data = buf.into_data(vec![len]);
            assert_eq!(data.try_to_vec::<f32>().expect("f32 data"), (0..len).map(|i| i as f32).collect::<Vec<_>>());
        }
    }
}
