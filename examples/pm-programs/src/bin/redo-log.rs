//! A redo log on a `MAP_SYNC` pool: three transactions, each setting all 32 home words
//! to its generation. `run` is correct: the log lines are persisted before the commit
//! record. `run-unflushed` persists the commit record but never flushes the log's data
//! lines: after a crash the commit record can say "replay generation g" over a log
//! that does not hold it, and `check` names the lines that lost their data.

use pm_programs::*;

fn transaction(p: &Pool, g: u64, flush_log: bool) {
    pmcrash_marker::mark!("tx_begin", g);
    for w in 0..WORDS {
        p.set(LOG + w, g);
    }
    if flush_log {
        p.persist(LOG, WORDS);
    }
    p.set(H_GEN, g);
    p.set(H_COMMIT, 1);
    p.persist(0, 3);
    pmcrash_marker::mark!("tx_commit", g);
    for w in 0..WORDS {
        p.set(HOME + w, g);
    }
    p.persist(HOME, WORDS);
    p.set(H_COMMIT, 0);
    p.persist(0, 3);
    pmcrash_marker::mark!("tx_end", g);
}

fn run(flush_log: bool) {
    let p = Pool::create();
    p.set(H_MAGIC, MAGIC);
    p.persist(0, 1);
    for g in 1..=3 {
        transaction(&p, g, flush_log);
    }
    println!("3 transactions committed");
}

fn check() {
    let Some(p) = Pool::open() else {
        println!("no pool: nothing committed");
        return;
    };
    if p.get(H_MAGIC) != MAGIC {
        println!("pool not initialised");
        return;
    }
    if p.get(H_COMMIT) == 1 {
        // Recovery would replay the log: it must hold the committed generation.
        let g = p.get(H_GEN);
        let bad: Vec<String> = (0..WORDS)
            .filter(|w| p.get(LOG + w) != g)
            .map(|w| line_of(LOG + w))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !bad.is_empty() {
            inconsistent(format!(
                "commit record for generation {g} is durable but the log's data lines are not: {}",
                bad.join(", ")
            ));
        }
        println!("committed generation {g}: log complete");
        return;
    }
    let first = p.get(HOME);
    if let Some(w) = (0..WORDS).find(|w| p.get(HOME + w) != first) {
        inconsistent(format!(
            "no commit pending but home data is torn: word 0 is {first}, word {w} is {} ({})",
            p.get(HOME + w),
            line_of(HOME + w)
        ));
    }
    println!("home at generation {first}");
}

fn main() {
    match mode().as_str() {
        "run" => run(true),
        "run-unflushed" => run(false),
        "check" => check(),
        other => {
            eprintln!("unknown mode {other}: expected run, run-unflushed or check");
            std::process::exit(2)
        }
    }
}
