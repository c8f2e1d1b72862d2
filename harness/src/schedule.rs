//! The order a workload's crash images are checked in, which need no check, and how
//! many crash points wait at once: the streaming core of the pipeline.
//!
//! Crash points come in one at a time (the pipeline makes them lazily), each with its
//! states and an owned [`PointSnapshot`]; a state's image is the snapshot plus the
//! state, its bytes built only by the checker worker that writes it. Images are
//! numbered per workload in the order they are first made; a state whose image was
//! made before (same [`ImageId`]) waits for that image's recovery.
//!
//! Read-set pruning (see `docs/pruning.md`): when a worker is free, the next image is
//! first looked up in a [`ClassTable`] of the images checked so far; if it equals one
//! on every line that image's check read, it takes that recovery without a guest run
//! (when fsck ran on the host, a worker still runs fsck on what that recovery leaves
//! of it: [`ImageJob::Equal`]).
//! So classes are found early, each point's all-persisted image is handed out first,
//! and while it is being checked the workers take the next points' all-persisted
//! images rather than its siblings (which it will likely prune).
//!
//! Recording a check's read set doubles what the check costs, so a check records
//! only when it may prune: once a point's lead is checked, its siblings are counted
//! by what they hold on the lines the lead's check read (a [`Forecast`]), and an
//! image no waiting sibling matches there is checked without recording
//! (`ImageJob::State`'s `record`).
//!
//! A point leaves (to be judged, its snapshot and states dropped) once every image of
//! its states has a recovery, in point order. New points are made only while the
//! points waiting hold less than the memory budget (at least one always may wait).

use crate::checker::{ImageJob, MountOutcome, Recovery};
use crash_models::delta::{ImageId, PointSnapshot};
use crash_models::points::CrashPoint;
use crash_models::prune::{ClassTable, Forecast, StateLines};
use crash_models::states::CrashState;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Crash points waiting at most, whatever the budget: enough lookahead for the
/// ordering above, little enough that the first findings come early.
const MAX_POINTS_AHEAD: usize = 64;

/// A crash point in flight, with what judging it needs.
pub(crate) struct PointWork<L> {
    /// The crash point.
    pub point: CrashPoint,
    /// Its in-flight lines as findings describe them.
    pub lines: Vec<L>,
    /// Its states and the index of each one's image.
    pub states: Vec<(CrashState, usize)>,
    /// A cap cut its states short.
    pub capped: bool,
    snap: Arc<PointSnapshot>,
    /// Images first made at this point and not yet handed out, the lead first.
    todo: VecDeque<usize>,
    /// The all-persisted state's image (else the first state's).
    lead: Option<usize>,
    /// Bytes held, besides the (shared) durable snapshot.
    memory: u64,
    /// Its waiting images counted by the lines its lead's check read, once that
    /// check is back with a read set.
    forecast: Option<Forecast>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Waiting,
    Checking,
    Done,
}

struct Image {
    status: Status,
    /// What to build it from, until it has a recovery.
    source: Option<(Arc<PointSnapshot>, CrashState)>,
    /// The record of the crash point it was first made at.
    point: u64,
    recovery: Option<Arc<Recovery>>,
    /// The checked image whose recovery it took.
    equal_to: Option<usize>,
}

/// What became of one distinct image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// A checker guest recovered it.
    Checked,
    /// It took the recovery of this image (first made at this crash point).
    Pruned(usize, u64),
}

/// The images and points of one workload in flight (see the module docs).
pub(crate) struct Scheduler<L> {
    prune: bool,
    budget: u64,
    images: Vec<Image>,
    ids: HashMap<ImageId, usize>,
    points: VecDeque<PointWork<L>>,
    table: Option<ClassTable<usize>>,
    in_flight: usize,
    /// Images a guest recovered.
    pub checked: usize,
    /// Images that took an equal image's recovery.
    pub pruned: usize,
    /// Images checked without recording a read set: forecast to prune nothing.
    pub unrecorded: usize,
}

/// True when a recovery may stand for every image equal to its image on what its
/// check read: the check ran to its end on a guest that survived it, on its first
/// guest, and recorded a non-empty read set. A guest that panicked or hung is never
/// a class: a hang is a timeout (host timing), and what a dying guest had read when
/// it died says nothing about what it would have read next.
fn usable_for_pruning(r: &Recovery) -> bool {
    matches!(
        r.mount,
        MountOutcome::Mounted { .. } | MountOutcome::Failed { .. }
    ) && r.restarts == 0
        && r.read_set.as_ref().is_some_and(|s| !s.is_empty())
}

impl<L> Scheduler<L> {
    /// A scheduler pruning (or not) and keeping waiting points under `budget` bytes.
    pub fn new(prune: bool, budget: u64) -> Scheduler<L> {
        Scheduler {
            prune,
            budget,
            images: Vec::new(),
            ids: HashMap::new(),
            points: VecDeque::new(),
            table: None,
            in_flight: 0,
            checked: 0,
            pruned: 0,
            unrecorded: 0,
        }
    }

    /// Bytes the waiting points hold (durable snapshots shared by neighbours counted
    /// once).
    pub fn memory(&self) -> u64 {
        let mut total = 0;
        let mut prev: Option<&Arc<PointSnapshot>> = None;
        for p in &self.points {
            total += p.memory;
            if !prev.is_some_and(|q| Arc::ptr_eq(q.durable(), p.snap.durable())) {
                total += p.snap.durable().memory() as u64;
            }
            prev = Some(&p.snap);
        }
        total
    }

    /// True when another crash point may be made now.
    pub fn wants_point(&self) -> bool {
        self.points.is_empty()
            || (self.points.len() < MAX_POINTS_AHEAD && self.memory() < self.budget)
    }

    /// Crash points waiting to be judged.
    pub fn points_waiting(&self) -> usize {
        self.points.len()
    }

    /// Images made so far.
    pub fn images(&self) -> usize {
        self.images.len()
    }

    /// Images with a recovery.
    pub fn resolved(&self) -> usize {
        self.checked + self.pruned
    }

    /// Images handed out and not yet back.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Distinct read sets among the classes.
    pub fn read_sets(&self) -> usize {
        self.table.as_ref().map_or(0, ClassTable::read_sets)
    }

    /// True when an image waits to be handed out.
    pub fn has_work(&self) -> bool {
        self.points.iter().any(|p| !p.todo.is_empty())
    }

    /// Take a crash point and its states.
    pub fn add_point(
        &mut self,
        point: CrashPoint,
        lines: Vec<L>,
        snap: Arc<PointSnapshot>,
        states: Vec<CrashState>,
        capped: bool,
    ) {
        let all = CrashState {
            kept: snap
                .in_flight()
                .iter()
                .filter(|l| !l.stores.is_empty())
                .map(|l| (l.line_offset, l.stores.len() as u32))
                .collect(),
        };
        let mut list = Vec::with_capacity(states.len());
        let mut todo = VecDeque::new();
        let mut lead = None;
        let mut memory = (snap.in_flight_memory() + lines.len() * std::mem::size_of::<L>()) as u64;
        for st in states {
            let id = snap.id(&st);
            let bytes = 48 + 16 * st.kept.len() as u64;
            let idx = match self.ids.get(&id) {
                Some(&i) => i,
                None => {
                    self.images.push(Image {
                        status: Status::Waiting,
                        source: Some((snap.clone(), st.clone())),
                        point: point.applied,
                        recovery: None,
                        equal_to: None,
                    });
                    let i = self.images.len() - 1;
                    self.ids.insert(id, i);
                    todo.push_back(i);
                    memory += bytes;
                    i
                }
            };
            if st == all {
                lead = Some(idx);
            }
            memory += bytes;
            list.push((st, idx));
        }
        let lead = lead.or(list.first().map(|s| s.1));
        if let Some(l) = lead {
            if let Some(at) = todo.iter().position(|&i| i == l) {
                todo.remove(at);
                todo.push_front(l);
            }
        }
        self.points.push_back(PointWork {
            point,
            lines,
            states: list,
            capped,
            snap,
            todo,
            lead,
            memory,
            forecast: None,
        });
    }

    fn status(&self, i: usize) -> Status {
        self.images[i].status
    }

    /// The next image to hand out, in the order of the module docs, and the index of
    /// the point it was made at.
    fn pick(&mut self) -> Option<(usize, usize)> {
        let lead_done =
            |s: &Self, p: &PointWork<L>| p.lead.is_none_or(|l| s.status(l) == Status::Done);
        let k = (0..self.points.len())
            .find(|&k| !self.points[k].todo.is_empty() && lead_done(self, &self.points[k]))
            .or_else(|| {
                self.points
                    .iter()
                    .position(|p| p.lead.is_some() && p.todo.front() == p.lead.as_ref())
            })
            .or_else(|| self.points.iter().position(|p| !p.todo.is_empty()))?;
        Some((k, self.points[k].todo.pop_front()?))
    }

    /// Count the waiting images of the points whose lead image `lead` is, by the
    /// lines its check read (`reads`).
    fn make_forecasts(&mut self, lead: usize, reads: &crash_models::readset::ReadSet) {
        for p in self.points.iter_mut().filter(|p| p.lead == Some(lead)) {
            let mut f = Forecast::new(reads, p.snap.line_size());
            for &i in &p.todo {
                if let Some((snap, st)) = self.images[i].source.as_ref() {
                    let changes = snap.changes(st);
                    f.add(&StateLines {
                        durable: snap.durable(),
                        changes: &changes,
                    });
                }
            }
            p.forecast = Some(f);
        }
    }

    /// The next image a checker guest must recover (images pruned on the way get
    /// their class's recovery), or `None` when nothing waits.
    pub fn next_job(&mut self) -> Option<(usize, ImageJob)> {
        while let Some((k, i)) = self.pick() {
            if self.status(i) != Status::Waiting {
                continue;
            }
            // A waiting image has its source.
            let (snap, st) = self.images[i].source.clone()?;
            let changes = snap.changes(&st);
            let lines = StateLines {
                durable: snap.durable(),
                changes: &changes,
            };
            // Taken out of its point's forecast either way; recorded unless the
            // forecast says no other waiting image shares its class (with no
            // forecast yet, it records).
            let record = !self.prune
                || self.points[k]
                    .forecast
                    .as_mut()
                    .is_none_or(|f| f.take(&lines) > 0);
            let class_of = self.table.as_ref().and_then(|t| t.find(&lines)).copied();
            if let Some(c) = class_of {
                let class = self.images[c].recovery.clone();
                let img = &mut self.images[i];
                img.equal_to = Some(c);
                if let Some(class) = class.as_ref().filter(|r| r.stores.is_some()) {
                    // fsck read outside the check: it runs on this image.
                    let class = class.clone();
                    img.status = Status::Checking;
                    self.in_flight += 1;
                    let image = Box::new(ImageJob::State {
                        point: snap,
                        state: st,
                        record: false,
                    });
                    return Some((i, ImageJob::Equal { image, class }));
                }
                img.status = Status::Done;
                img.source = None;
                img.recovery = class;
                self.pruned += 1;
                continue;
            }
            self.images[i].status = Status::Checking;
            self.in_flight += 1;
            if !record {
                self.unrecorded += 1;
            }
            return Some((
                i,
                ImageJob::State {
                    point: snap,
                    state: st,
                    record,
                },
            ));
        }
        None
    }

    /// A recovery came back.
    pub fn done(&mut self, rec: Recovery) {
        let i = rec.index;
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(c) = self.images[i].equal_to {
            // An `ImageJob::Equal`: the class's recovery with this image's fsck. The
            // same verdict (the usual case) shares the class's; another keeps its own.
            let class = self.images[c].recovery.clone();
            let img = &mut self.images[i];
            img.status = Status::Done;
            img.source = None;
            img.recovery = match class {
                Some(k) if k.fsck == rec.fsck => Some(k),
                _ => Some(Arc::new(rec)),
            };
            self.pruned += 1;
            return;
        }
        if std::env::var_os("PMCRASH_PRUNE_DEBUG").is_some() {
            self.debug_checked(&rec);
        }
        self.checked += 1;
        let mut rec = rec;
        let mut class = false;
        let mut lead_reads = None;
        if let (true, Some(reads), Some((snap, st))) = (
            self.prune && usable_for_pruning(&rec),
            rec.read_set.as_ref(),
            self.images[i].source.as_ref(),
        ) {
            let changes = snap.changes(st);
            lead_reads = Some(reads.clone());
            class = self
                .table
                .get_or_insert_with(|| ClassTable::new(snap.line_size()))
                .insert(
                    reads,
                    &StateLines {
                        durable: snap.durable(),
                        changes: &changes,
                    },
                    i,
                );
        }
        if let Some(reads) = lead_reads {
            self.make_forecasts(i, &reads);
        }
        // The table keeps each distinct read set once; a recovery kept for judging
        // needs neither it nor, unless it is a class, its stores (an XFS check's read
        // set is thousands of ranges, and most images checked are kept to the end).
        rec.read_set = None;
        if !class {
            rec.stores = None;
        }
        let img = &mut self.images[i];
        img.status = Status::Done;
        img.source = None;
        img.recovery = Some(Arc::new(rec));
    }

    /// `PMCRASH_PRUNE_DEBUG`: one line on stderr per checked image, saying which of
    /// its point's in-flight lines its check read (what keeps its siblings from being
    /// pruned).
    fn debug_checked(&self, rec: &Recovery) {
        let img = &self.images[rec.index];
        let Some((snap, st)) = img.source.as_ref() else {
            return;
        };
        let ls = u64::from(snap.line_size());
        let in_flight = snap.in_flight();
        let total = in_flight.len();
        let mut inside = Vec::new();
        for l in &in_flight {
            let hit = rec
                .read_set
                .as_ref()
                .is_some_and(|r| r.intersects(l.line_offset..l.line_offset + ls));
            if hit {
                inside.push(l.line_offset / ls);
            }
        }
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &l in &inside {
            match ranges.last_mut() {
                Some(r) if r.1 + 1 == l => r.1 = l,
                _ => ranges.push((l, l)),
            }
        }
        eprintln!(
            "prune-debug: image {} point {} kept {} mount {:?} read {} lines; in-flight {} read {}: {:?}",
            rec.index,
            img.point,
            st.kept.len(),
            matches!(rec.mount, MountOutcome::Mounted { .. }),
            rec.read_set.as_ref().map_or(0, |r| r.lines()),
            total,
            inside.len(),
            ranges
        );
    }

    /// Hand nothing more out (an interrupt): points waiting for images never handed
    /// out will not be judged.
    pub fn stop(&mut self) {
        for p in &mut self.points {
            p.todo.clear();
        }
    }

    /// The first waiting point, if every image of its states has a recovery.
    pub fn pop_judgeable(&mut self) -> Option<PointWork<L>> {
        let p = self.points.front()?;
        if p.states.iter().any(|s| self.status(s.1) != Status::Done) {
            return None;
        }
        self.points.pop_front()
    }

    /// The recovery of image `i` (which has one).
    pub fn recovery(&self, i: usize) -> &Recovery {
        self.images[i]
            .recovery
            .as_deref()
            .expect("a judged image has a recovery")
    }

    /// What became of image `i` (which has a recovery).
    pub fn fate(&self, i: usize) -> Fate {
        match self.images[i].equal_to {
            Some(c) => Fate::Pruned(c, self.images[c].point),
            None => Fate::Checked,
        }
    }
}
