//! A commit flag after non-temporal copies: each generation copies 32 words into the
//! data lines with `movnti` (as `pmem_memcpy_nodrain` does), then sets a flag word and
//! persists the flag. `run` drains (`sfence`) the copy before the flag; `run-nodrain`
//! does not, so the flag can reach PM before the data: `check` finds a flag naming a
//! generation the data does not hold.

use pm_programs::*;

fn run(drain: bool) {
    let p = Pool::create();
    p.set(H_MAGIC, MAGIC);
    p.persist(0, 1);
    for g in 1..=3u64 {
        for w in 0..WORDS {
            p.set_nt(HOME + w, g);
        }
        if drain {
            pmcrash_marker::sfence();
        }
        p.set(H_GEN, g);
        p.flush(H_GEN, 1);
        // The crash point that matters: the flag's line is on its way, and without
        // the drain above so are the copies.
        pmcrash_marker::mark!("flag_flushed", g);
        pmcrash_marker::sfence();
    }
    println!("3 generations published");
}

fn check() {
    let Some(p) = Pool::open() else {
        println!("no pool");
        return;
    };
    if p.get(H_MAGIC) != MAGIC {
        println!("pool not initialised");
        return;
    }
    let g = p.get(H_GEN);
    if let Some(w) = (0..WORDS).find(|w| p.get(HOME + w) < g) {
        inconsistent(format!(
            "flag says generation {g} but data word {w} holds {} ({}): the copy was not drained before the flag",
            p.get(HOME + w),
            line_of(HOME + w)
        ));
    }
    println!("generation {g} complete");
}

fn main() {
    match mode().as_str() {
        "run" => run(true),
        "run-nodrain" => run(false),
        "check" => check(),
        other => {
            eprintln!("unknown mode {other}: expected run, run-nodrain or check");
            std::process::exit(2)
        }
    }
}
