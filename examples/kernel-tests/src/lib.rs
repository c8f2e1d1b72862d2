//! An example crash-consistency suite, as a kernel developer keeps it next to their
//! tree. The tests are in `tests/dax.rs`, the workloads in `workloads/`, the stable
//! summaries in `tests/snapshots/`.
//!
//! ```sh
//! cargo test -p pmcrash-kernel-tests                                    # Debian's 6.12 kernel
//! PMCRASH_KERNEL_TREE=~/src/linux cargo test -p pmcrash-kernel-tests    # your build
//! ```
//!
//! With `PMCRASH_KERNEL_TREE` set, the guests run that tree's `arch/x86/boot/bzImage`
//! (or `vmlinux`) with its modules (`make modules_install INSTALL_MOD_PATH=<tree>`, or
//! the `.ko` files in the tree), after its `.config` is checked for what the guest
//! needs. A snapshot that changes is a change in what survives a crash: review it with
//! `cargo insta review`.
