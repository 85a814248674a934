/* The operations dashboard without reloads: polls the admin's JSON endpoint every
   DASHBOARD_REFRESH_SECONDS and swaps in the fragments the server rendered (figures, card
   table, SVG charts). No library, nothing from another site. The server escapes every
   text inside the fragments; plain-text targets use textContent. */
(function () {
  "use strict";

  function start(root) {
    var url = root.getAttribute("data-url");
    var every = Number(root.getAttribute("data-refresh")) || 0;
    var errorBox = root.querySelector(".dash-error");
    var timer = null;
    var failures = 0;

    function schedule() {
      var seconds = every || 5;
      // Back off (up to a minute) while the server does not answer.
      var delay = Math.min(60, seconds * Math.pow(2, Math.min(failures, 4))) * 1000;
      timer = window.setTimeout(refresh, delay);
    }

    function showError(text) {
      root.setAttribute("data-stale", "true");
      if (errorBox) {
        errorBox.textContent = text;
        errorBox.hidden = false;
      }
    }

    function apply(data) {
      var html = data.html || {};
      root.querySelectorAll("[data-dash-html]").forEach(function (el) {
        var key = el.getAttribute("data-dash-html");
        if (Object.prototype.hasOwnProperty.call(html, key)) {
          el.innerHTML = html[key];
        }
      });
      root.querySelectorAll("[data-dash-text]").forEach(function (el) {
        var key = el.getAttribute("data-dash-text");
        if (Object.prototype.hasOwnProperty.call(html, key)) {
          el.textContent = html[key];
        }
      });
      if (data.refresh_seconds) {
        every = Number(data.refresh_seconds);
      }
      root.setAttribute("data-updates", String(Number(root.getAttribute("data-updates") || "0") + 1));
      root.setAttribute("data-generated-at", data.generated_at || "");
      root.removeAttribute("data-stale");
      if (errorBox) {
        errorBox.hidden = true;
        errorBox.textContent = "";
      }
    }

    function refresh() {
      timer = null;
      fetch(url, {credentials: "same-origin", cache: "no-store", headers: {"Accept": "application/json"}})
        .then(function (response) {
          var type = response.headers.get("Content-Type") || "";
          if (response.status === 403) {
            throw new Error("not allowed any more");
          }
          if (!response.ok || type.indexOf("application/json") === -1) {
            // A redirect to the login page arrives as HTML.
            throw new Error(response.ok ? "the session has ended: log in again" : "HTTP " + response.status);
          }
          return response.json();
        })
        .then(function (data) {
          failures = 0;
          apply(data);
        })
        .catch(function (error) {
          failures += 1;
          showError(" · not updated: " + (error && error.message ? error.message : "network error"));
        })
        .finally(schedule);
    }

    document.addEventListener("visibilitychange", function () {
      // A hidden tab stops polling; it catches up at once when shown again.
      if (document.hidden) {
        if (timer) { window.clearTimeout(timer); timer = null; }
      } else if (!timer) {
        refresh();
      }
    });

    if (root.hasAttribute("data-immediate")) {
      refresh();
    } else {
      schedule();
    }
  }

  function init() {
    document.querySelectorAll("[data-dashboard-root], #audit-dashboard").forEach(start);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
