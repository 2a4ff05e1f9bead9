// mimalloc returns freed memory to the system promptly; with glibc's allocator the memory a stage
// frees stays with the thread that freed it and peak RSS at 1 M customers was about twice as high.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    no_transparent_huge_pages();
    std::process::exit(mlpipe::cli::main());
}

/// Turns transparent huge pages off for this process. mimalloc asks for them (madvise), and the
/// stages allocate and free large buffers all the time: each first touch of a returned region
/// then had the kernel zero a whole 2 MiB page. At 1 M customers that was 2.3 of 3.5 s of
/// system time, about 1.5 s of wall time, and 50 MB more peak memory (docs/PERFORMANCE.md).
/// `MIMALLOC_ALLOW_THP=0` does the same through mimalloc; this makes it the default, and an
/// explicit `MIMALLOC_ALLOW_THP` (say `=1`) decides instead.
fn no_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
