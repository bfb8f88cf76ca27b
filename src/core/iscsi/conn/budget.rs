//! The memory budget of a connection's tasks: each reserves its data size from the
//! connection's budget and the process-wide pool before it collects data or runs, or waits in
//! order until both have room.

use super::*;

impl Connection {
    /// Reserves the task's data size from the connection budget and the process-wide pool,
    /// or queues it.
    pub(super) fn reserve_budget(&mut self, itt: u32) -> bool {
        let task = &self.tasks[&itt];
        let want = (task.edtl as u64).max(1);
        let fits = self.budget_fits(want)
            && self.budget_queue.front().is_none_or(|&head| head == itt)
            && self.reserve_memory(want);
        if !fits {
            if !self.budget_queue.contains(&itt) {
                self.budget_queue.push_back(itt);
            }
            if let Some(t) = self.tasks.get_mut(&itt) {
                t.phase = Phase::Waiting;
            }
            return false;
        }
        self.budget_used += want;
        self.tasks.get_mut(&itt).expect("task").budget = want;
        true
    }

    /// Reserves a write's data as its command arrives with unsolicited data, before any of it
    /// is kept: that data comes whether or not there is room, and a command holding it while it
    /// waited for the pool could wait on other such commands forever. Without room at once
    /// (the connection's budget or the process-wide pool spent, or tasks queued before it)
    /// the command is refused with TASK SET FULL, which initiators retry.
    pub(super) fn reserve_on_arrival(&mut self, want: u64) -> Option<u64> {
        let fits = self.budget_fits(want) && self.budget_queue.is_empty() && self.cfg.memory.try_reserve(want);
        if !fits {
            tracing::debug!(want, "no memory for a write's unsolicited data: TASK SET FULL");
            return None;
        }
        self.budget_used += want;
        Some(want)
    }

    /// Whether `want` more bytes fit the connection's budget. A task larger than the whole
    /// budget runs alone rather than never.
    pub(super) fn budget_fits(&self, want: u64) -> bool {
        self.budget_used + want <= self.cfg.buffer_budget || self.budget_used == 0
    }

    /// Takes `want` bytes from the process-wide pool, noting when it refused.
    pub(super) fn reserve_memory(&mut self, want: u64) -> bool {
        let seen = self.cfg.memory.generation();
        let taken = self.cfg.memory.try_reserve(want);
        self.memory_refused_at = (!taken).then_some(seen);
        taken
    }

    /// Takes a task out of the queue for budget and gives back what it held (then the tasks
    /// queued behind it may start).
    pub(super) fn release_task_budget(&mut self, itt: u32, budget: u64) {
        self.budget_queue.retain(|&i| i != itt);
        self.release_budget(budget);
    }

    pub(super) fn release_budget(&mut self, amount: u64) {
        let amount = amount.min(self.budget_used);
        self.budget_used -= amount;
        self.cfg.memory.release(amount);
        self.start_queued();
    }

    /// Starts the tasks waiting for budget, in order, while they fit.
    pub(super) fn start_queued(&mut self) {
        while let Some(&next) = self.budget_queue.front() {
            let Some(task) = self.tasks.get(&next) else {
                self.budget_queue.pop_front();
                continue;
            };
            let want = (task.edtl as u64).max(1);
            if !self.budget_fits(want) {
                break;
            }
            if !self.reserve_memory(want) {
                break;
            }
            self.budget_used += want;
            self.tasks.get_mut(&next).expect("task").budget = want;
            self.budget_queue.pop_front();
            self.progress(next);
        }
    }

    /// When tasks wait for the process-wide pool: the pool's generation when it refused
    /// (wait for [`IoMemory::freed_since`] it, then call [`Connection::retry_memory`]).
    pub fn waiting_for_memory(&self) -> Option<u64> {
        self.memory_refused_at.filter(|_| !self.budget_queue.is_empty())
    }

    /// Tries the tasks waiting for the process-wide pool again.
    pub fn retry_memory(&mut self) {
        self.memory_refused_at = None;
        self.start_queued();
    }
}
