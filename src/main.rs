// mimalloc returns freed memory to the system promptly; with glibc's allocator the memory a stage
// frees stays with the thread that freed it and peak RSS at 1 M customers was about twice as high.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    no_transparent_huge_pages();
    std::process::exit(mlpipe::cli::main());
}

/// Keeps transparent huge pages to the buffers that ask for them. mimalloc is built without its
/// own huge-page requests (`no_thp`): the stages allocate and free large buffers all the time,
/// and each first touch of a returned region had the kernel zero a whole 2 MiB page (at 1 M
/// customers 2.3 of 3.5 s of system time, about 1.5 s of wall time and 50 MB more peak memory;
/// docs/PERFORMANCE.md). The booster's long-lived bins and gradients do ask (`madvise`), which
/// the kernel honours in its usual `madvise` mode. Where the kernel gives huge pages to every
/// mapping (`always`), they are turned off for this process. An explicit `MIMALLOC_ALLOW_THP`
/// leaves the choice to mimalloc (`=0` turns them off for the process).
fn no_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    if std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[always]"))
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag of this process.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}
