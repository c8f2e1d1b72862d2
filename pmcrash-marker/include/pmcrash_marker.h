/*
 * pmcrash_marker.h: mark a C program's own operations and commit points for pmcrash,
 * the same cpuid markers as the Rust crate `pmcrash-marker` (see its documentation).
 *
 *   #include "pmcrash_marker.h"
 *   pmcrash_mark("tx_commit", n);
 *
 * List the names in the workload's exec op (`markers = ["tx_commit"]`) so crash
 * points and findings show them. Outside pmcrash a marker is a cpuid of an unknown
 * leaf: harmless. Header-only; x86-64, GCC or Clang.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#ifndef PMCRASH_MARKER_H
#define PMCRASH_MARKER_H

#include <stdint.h>

#define PMCRASH_MARKER_LEAF 0x50434d00u
#define PMCRASH_MARKER_PROGRAM 5u

/* 32-bit FNV-1a of a marker name (what goes in edx). */
static inline uint32_t pmcrash_name_hash(const char *name)
{
	uint32_t h = 0x811c9dc5u;
	for (; *name; name++) {
		h ^= (uint8_t)*name;
		h *= 0x01000193u;
	}
	return h;
}

/* The marker of a name hash with a value of the program's choosing. */
static inline void pmcrash_mark_hash(uint32_t hash, uint64_t value)
{
	uint32_t eax = PMCRASH_MARKER_LEAF, ecx = PMCRASH_MARKER_PROGRAM, edx = hash;
	uint64_t rdi = 0;
	__asm__ volatile("push %%rbx\n\tcpuid\n\tpop %%rbx"
			 : "+a"(eax), "+c"(ecx), "+d"(edx)
			 : "S"(value), "D"(rdi)
			 : "memory");
}

/* The marker named `name` with `value`. */
static inline void pmcrash_mark(const char *name, uint64_t value)
{
	pmcrash_mark_hash(pmcrash_name_hash(name), value);
}

#endif
