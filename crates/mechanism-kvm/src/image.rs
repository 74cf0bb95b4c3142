//! What the running executable consists of: its loadable segments and its
//! thread-local-storage template, from the program headers.

use crate::PAGE;

/// One loadable segment of the executable, widened to whole pages.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// First byte (page-aligned).
    pub start: usize,
    /// One past the last byte (page-aligned).
    pub end: usize,
    /// Writable (the data segment: `.data.rel.ro`, `.got`, `.data`, `.bss`).
    pub writable: bool,
    /// Executable (code).
    pub executable: bool,
}

/// The thread-local-storage template (`PT_TLS`).
#[derive(Clone, Copy, Debug)]
pub struct Tls {
    /// Address of the initialized part.
    pub template: usize,
    /// Bytes of initialized data.
    pub filesz: usize,
    /// Bytes in all (the rest is zero).
    pub memsz: usize,
    /// Alignment.
    pub align: usize,
}

/// The executable's layout in this process.
#[derive(Debug, Default)]
pub struct Image {
    /// Loadable segments.
    pub segments: Vec<Segment>,
    /// The part of the data segment that is read-only after relocation.
    pub relro: Option<(usize, usize)>,
    /// The thread-local-storage template, if any.
    pub tls: Option<Tls>,
}

unsafe extern "C" fn first_object(info: *mut libc::dl_phdr_info, _size: usize, data: *mut libc::c_void) -> libc::c_int {
    // SAFETY: dl_iterate_phdr passes a valid dl_phdr_info whose program
    // headers stay valid during the callback; `data` is the `Image` that
    // `describe` passed in.
    let (info, image) = unsafe { (&*info, &mut *(data as *mut Image)) };
    // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
    let headers = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let base = info.dlpi_addr as usize;
    for h in headers {
        let start = base + h.p_vaddr as usize;
        match h.p_type {
            libc::PT_LOAD => image.segments.push(Segment {
                start: start & !(PAGE - 1),
                end: (start + h.p_memsz as usize).next_multiple_of(PAGE),
                writable: h.p_flags & libc::PF_W != 0,
                executable: h.p_flags & libc::PF_X != 0,
            }),
            libc::PT_GNU_RELRO => {
                image.relro = Some((start & !(PAGE - 1), (start + h.p_memsz as usize) & !(PAGE - 1)));
            }
            libc::PT_TLS => {
                image.tls = Some(Tls {
                    template: start,
                    filesz: h.p_filesz as usize,
                    memsz: h.p_memsz as usize,
                    align: (h.p_align as usize).max(1),
                })
            }
            _ => {}
        }
    }
    1 // the first object is the executable: stop
}

/// The executable's segments and TLS template.
pub fn describe() -> Image {
    let mut image = Image::default();
    // SAFETY: the callback only reads the headers and writes `image`, which
    // outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(first_object), &mut image as *mut Image as *mut libc::c_void) };
    image
}
