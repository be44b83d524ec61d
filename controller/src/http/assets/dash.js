// Tollgate dashboard: live updates only. Every page works without this script; with it, an
// element with data-events follows a server-sent event stream and replaces its content with
// each `grid` event, until `end`.
"use strict";
document.querySelectorAll("[data-events]").forEach(function (element) {
  var source = new EventSource(element.getAttribute("data-events"));
  source.addEventListener("grid", function (event) {
    element.innerHTML = event.data;
    element.setAttribute("data-updated", String(Date.now()));
  });
  source.addEventListener("end", function () {
    source.close();
    element.setAttribute("data-ended", "true");
  });
  window.addEventListener("pagehide", function () { source.close(); });
});
