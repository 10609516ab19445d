// pgmq-worker dashboard: keeps the open page current through Server-Sent Events.
// The server sends {"target": id, "html": fragment} (rendered by the page's own templates, so
// every value in it is escaped there); this swaps the fragment in. `event: reload` reloads once.
"use strict";

(function () {
  const live = document.body.dataset.live;
  const state = document.getElementById("live-state");
  if (!live || !window.EventSource) return;

  function say(text) { if (state) state.textContent = text; }

  function swap(target, html) {
    const el = document.getElementById(target);
    if (!el) return;
    const template = document.createElement("template");
    // A <tbody>'s rows must be parsed inside a table, or the parser drops the <tr> tags.
    const inTable = el.tagName === "TBODY";
    template.innerHTML = inTable ? "<table><tbody>" + html + "</tbody></table>" : html;
    const source = inTable ? template.content.querySelector("tbody") : template.content;
    el.replaceChildren(...source.childNodes);
  }

  const stream = new EventSource("/dashboard/events/" + live);
  stream.onopen = () => say("live");
  stream.onmessage = (event) => {
    const change = JSON.parse(event.data);
    swap(change.target, change.html);
    say("live, updated " + new Date().toISOString().slice(11, 19) + " UTC");
  };
  stream.addEventListener("reload", () => { stream.close(); window.location.reload(); });
  stream.onerror = () => say("reconnecting\u2026");
})();

// Confirm destructive actions (buttons with data-confirm) without inline handlers.
document.addEventListener("submit", (event) => {
  const button = event.submitter;
  const question = button && button.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

// Filters left empty stay out of the URL (a shorter, shareable link): disabled controls are not sent.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (event.defaultPrevented || !form.matches || !form.matches("form.filters")) return;
  for (const control of form.querySelectorAll("input, select")) {
    if (!control.value) control.disabled = true;
  }
  // Back/forward restores the page from cache: enable the controls again for that.
  window.addEventListener("pageshow", () => form.querySelectorAll(":disabled").forEach((c) => { c.disabled = false; }), { once: true });
});
