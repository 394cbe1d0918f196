// Keeps a running run's page current: every second, while the server says the run runs
// (`X-Run-State: running`), the page's live part is fetched again and swapped in.
"use strict";
(function () {
  const live = document.querySelector("[data-live]");
  if (!live || live.dataset.running !== "true") return;
  async function refresh() {
    try {
      const response = await fetch(live.dataset.live, { credentials: "same-origin" });
      if (response.ok) {
        live.innerHTML = await response.text();
        live.dataset.running = response.headers.get("x-run-state") === "running" ? "true" : "false";
        live.dataset.refreshed = String(Number(live.dataset.refreshed || "0") + 1);
      }
    } catch (e) {
      // The coordinator is away for a moment (a failover): try again.
    }
    if (live.dataset.running === "true") setTimeout(refresh, 1000);
  }
  setTimeout(refresh, 1000);
})();
