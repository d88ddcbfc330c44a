/* Sign-in (password + TOTP) and one-time set-up links (/login?setup=TOKEN). */
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const next = TS.safeNext(params.get("next") || "/");
  const setup = params.get("setup");
  const $ = (id) => document.getElementById(id);
  const message = $("login-message");

  function say(text, kind = "error") {
    message.textContent = text;
    message.className = "message " + kind;
  }

  function show(form) {
    for (const id of ["login-form", "enrol-form", "confirm-form"]) {
      $(id).classList.toggle("hidden", id !== form);
    }
    const first = $(form).querySelector("input");
    if (first) first.focus();
  }

  async function errorOf(response) {
    try {
      return (await response.json()).error || response.statusText;
    } catch (_) {
      return response.statusText;
    }
  }

  function busy(button, on) {
    button.disabled = on;
    button.classList.toggle("busy", on);
  }

  // Already signed in (e.g. back button): straight on.
  if (!setup) {
    fetch("/auth/me", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((r) => { if (r.ok) location.replace(next); })
      .catch(() => {});
  }
  if (params.has("next") && !setup) say("Please sign in to continue.", "info");

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("login-submit");
    const body = {
      username: $("login-username").value.trim(),
      password: $("login-password").value,
      code: $("login-code").value.replace(/\s+/g, ""),
    };
    if (!body.username || !body.password || !/^\d{6}$/.test(body.code)) {
      say("Enter your username, password and the six-digit code from your authenticator.");
      return;
    }
    busy(button, true);
    say("Signing in…", "info");
    try {
      const response = await TS.post("/auth/login", body);
      if (response.ok) {
        say("Signed in.", "ok");
        location.replace(next);
        return;
      }
      $("login-code").value = "";
      if (response.status === 429) {
        const wait = response.headers.get("Retry-After");
        say(`Too many attempts. Try again${wait ? ` in ${wait} s` : " later"}.`);
      } else if (response.status === 401) {
        say("Sign-in failed: check your username, password and a fresh authenticator code.");
      } else {
        say(`Sign-in failed: ${await errorOf(response)}`);
      }
      $("login-code").focus();
    } catch (_) {
      say("The server cannot be reached.");
    } finally {
      busy(button, false);
    }
  });

  let enrolFor = null; // the user an enrolment link was issued for; null: the name is chosen

  /** Whom the set-up link is for: an enrolment link shows its user's name (the server
   *  ignores any other); the bootstrap link lets the first administrator choose one. */
  async function describeLink() {
    const form = $("enrol-form");
    const fields = [...form.querySelectorAll("input, button")];
    fields.forEach((node) => { node.disabled = true; });
    say("Checking the link…", "info");
    let response;
    try {
      response = await TS.post("/auth/enrol/link", { token: setup });
    } catch (_) {
      say("The server cannot be reached.");
      return;
    }
    if (!response.ok) {
      say(`${await errorOf(response)}. Ask an administrator for a new link.`);
      return; // the form stays disabled: nothing typed into it could work
    }
    const link = await response.json();
    fields.forEach((node) => { node.disabled = false; });
    say("", "info");
    if (link.purpose === "enrol" && link.username) {
      enrolFor = link.username;
      $("enrol-name").textContent = link.username;
      $("enrol-account").classList.remove("hidden");
      $("enrol-username-field").classList.add("hidden");
      // Kept, read-only, for password managers to save the new password under this name.
      $("enrol-username").value = link.username;
      $("enrol-username").readOnly = true;
      $("enrol-password").focus();
    } else {
      $("enrol-intro").textContent = "This one-time link makes you this server's first " +
        "administrator: choose your user name and password, then register an authenticator app.";
      $("enrol-username").focus();
    }
  }

  $("enrol-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const password = $("enrol-password").value;
    if (password !== $("enrol-password2").value) {
      say("The two passwords differ.");
      return;
    }
    const button = $("enrol-submit");
    busy(button, true);
    try {
      const body = { token: setup, password };
      if (enrolFor === null) body.username = $("enrol-username").value.trim();
      const response = await TS.post("/auth/enrol", body);
      if (!response.ok) {
        say(await errorOf(response));
        return;
      }
      const started = await response.json();
      const secret = new URL(started.otpauth_uri).searchParams.get("secret") || "";
      // The SVG goes in as an image: nothing in it can run or restyle the page.
      $("enrol-qr").src = "data:image/svg+xml;base64," +
        btoa(unescape(encodeURIComponent(started.qr_svg)));
      $("enrol-secret").textContent = secret.replace(/(.{4})/g, "$1 ").trim();
      $("enrol-secret").dataset.secret = secret;
      say("");
      show("confirm-form");
    } catch (_) {
      say("The server cannot be reached.");
    } finally {
      busy(button, false);
    }
  });

  $("confirm-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const code = $("confirm-code").value.replace(/\s+/g, "");
    if (!/^\d{6}$/.test(code)) {
      say("Enter the six-digit code from your authenticator.");
      return;
    }
    const button = $("confirm-submit");
    busy(button, true);
    try {
      const response = await TS.post("/auth/enrol/confirm", { token: setup, code });
      if (response.ok) {
        say("Your account is ready.", "ok");
        location.replace(next);
        return;
      }
      say(await errorOf(response));
    } catch (_) {
      say("The server cannot be reached.");
    } finally {
      busy(button, false);
    }
  });

  if (setup) {
    show("enrol-form");
    describeLink();
  }
})();
