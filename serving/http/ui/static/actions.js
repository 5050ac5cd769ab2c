// servewell UI actions: promote, roll back, start or end a shadow or canary, through the admin
// API. The admin token is kept in this tab's sessionStorage only, and sent as a bearer token.
"use strict";
(function () {
  const panel = document.getElementById("actions");
  if (!panel) return;
  const model = panel.dataset.model;
  const status = document.getElementById("action-status");
  const tokenInput = document.getElementById("admin-token");
  const KEY = "servewell-admin-token";
  tokenInput.value = sessionStorage.getItem(KEY) || "";
  tokenInput.addEventListener("change", () => sessionStorage.setItem(KEY, tokenInput.value));

  function say(text, ok) {
    status.textContent = text;
    status.className = ok ? "result ok" : "result bad";
  }

  async function call(method, path, body) {
    const token = tokenInput.value.trim();
    if (!token) { say("Enter the admin token first.", false); return; }
    sessionStorage.setItem(KEY, token);
    const init = { method, headers: { "Authorization": "Bearer " + token } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      say("The service could not be reached: " + error, false);
      return;
    }
    const text = await response.text();
    let message = text;
    try {
      const parsed = JSON.parse(text);
      message = parsed.error ? parsed.error.message : JSON.stringify(parsed);
    } catch (_) { /* not JSON: show it as it is */ }
    if (response.ok) {
      say("Done (" + response.status + "): " + message, true);
      setTimeout(() => window.location.reload(), 1500);
    } else {
      say("Refused (" + response.status + "): " + message, false);
    }
  }

  const base = "/admin/models/" + encodeURIComponent(model);
  const version = (id) => parseInt(document.getElementById(id).value, 10);
  const actions = {
    promote: () => {
      const v = version("promote-version");
      if (confirm("Make " + model + " v" + v + " the production version?")) {
        return call("POST", base + "/promote/" + v);
      }
    },
    rollback: () => {
      if (confirm("Roll " + model + " back to its previous production version?")) {
        return call("POST", base + "/rollback");
      }
    },
    shadow: () => {
      const v = version("candidate-version");
      if (confirm("Run " + model + " v" + v + " in shadow on every request?")) {
        return call("PUT", base + "/traffic", { mode: "shadow", version: v, sample: 1.0 });
      }
    },
    canary: () => {
      const v = version("candidate-version");
      const weight = parseFloat(document.getElementById("canary-weight").value);
      if (confirm("Let " + model + " v" + v + " answer " + weight + " % of requests?")) {
        return call("PUT", base + "/traffic", { mode: "canary", version: v, weight: weight });
      }
    },
    end: () => {
      if (confirm("End " + model + "'s experiment? Production answers every request again.")) {
        return call("DELETE", base + "/traffic");
      }
    },
  };
  panel.querySelectorAll("button[data-action]").forEach((button) => {
    button.addEventListener("click", () => actions[button.dataset.action]());
  });
})();
