// Keeps every element with data-job-url up to date by polling the job's JSON endpoint
// until the job is final. Fields inside it are marked data-field="status|percent|step|note".
"use strict";

(function () {
  const INTERVAL_MS = 500;

  function render(element, job) {
    const status = element.querySelector('[data-field="status"]');
    if (status) {
      status.textContent = job.status;
      status.className = "status status-" + job.status;
    }
    const bar = element.querySelector("progress");
    if (bar && job.percent !== undefined) bar.value = job.percent;
    const percent = element.querySelector('[data-field="percent"]');
    if (percent && job.percent !== undefined) percent.textContent = job.percent.toFixed(0) + "%";
    const step = element.querySelector('[data-field="step"]');
    if (step) step.textContent = job.step || "";
    const note = element.querySelector('[data-field="note"]');
    if (note) note.textContent = job.outcome || job.error || "";
    element.dataset.status = job.status;
  }

  async function refresh(element) {
    const response = await fetch(element.dataset.jobUrl, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
    if (!response.ok) return; // logged out or gone: leave the row as it is
    const job = await response.json();
    const wasFinal = element.dataset.final === "true";
    render(element, job);
    element.dataset.final = String(job.final);
    // A page that shows more than the row (results, timings) reloads once the job ends.
    if (job.final && !wasFinal && element.hasAttribute("data-reload-when-final")) {
      window.location.reload();
    }
  }

  async function poll() {
    const pending = Array.from(document.querySelectorAll("[data-job-url]")).filter(
      (element) => element.dataset.final !== "true"
    );
    if (pending.length === 0) return;
    await Promise.all(pending.map((element) => refresh(element).catch(() => {})));
    window.setTimeout(poll, INTERVAL_MS);
  }

  poll();
})();
