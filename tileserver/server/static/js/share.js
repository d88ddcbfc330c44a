/* Shared views. The "Share" panel gives two links to what is on the screen:
   - for colleagues with access: /view/ID?x=..&y=..&zoom=..&rot=.. (and the side-by-side
     slides and offsets). The view is in the query, not the fragment: the server sends a
     browser without a session to /login?next=<path and query>, and the login page returns
     there, so the view survives the round trip (a fragment would stay behind).
   - for anyone, when the server lets this user make one: a signed link (POST
     /api/slides/ID/share, tiles only, at most 15 minutes) to /static/signed.html, which
     shows the same view without an account.
   x and y are the view's centre in level-0 pixels, zoom the screen pixels per level-0 pixel
   (so the same magnification on any screen), rot the rotation in degrees. Opening /view/ID
   with them shows that view. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const slideId = location.pathname.split("/").pop();
  const MAX_ZOOM = 1000;
  let viewer = null;

  /** {x, y, zoom, rot} from a query, or null if it has no valid view. */
  function viewOf(params) {
    const x = Number(params.get("x"));
    const y = Number(params.get("y"));
    const zoom = Number(params.get("zoom"));
    const rot = Number(params.get("rot") || 0);
    if (!params.has("x") || !params.has("y") || !params.has("zoom")) return null;
    if (![x, y, zoom, rot].every(Number.isFinite) || zoom <= 0 || zoom > MAX_ZOOM) return null;
    return { x, y, zoom, rot };
  }

  function goTo(view) {
    const viewport = viewer.viewport;
    TSAdjust.set(viewer, { rotation: view.rot });
    viewport.zoomTo(viewport.imageToViewportZoom(view.zoom), null, true);
    viewport.panTo(viewport.imageToViewportCoordinates(new OpenSeadragon.Point(view.x, view.y)), true);
  }

  function currentView() {
    const viewport = viewer.viewport;
    const c = viewport.viewportToImageCoordinates(viewport.getCenter(true));
    return {
      x: c.x.toFixed(1),
      y: c.y.toFixed(1),
      zoom: viewport.viewportToImageZoom(viewport.getZoom(true)).toPrecision(6),
      rot: String(Math.round(viewport.getRotation() * 10) / 10),
    };
  }

  /** The view in #osd's data attributes (level-0 pixels), for the tests. */
  function publish() {
    const viewport = viewer.viewport;
    const bounds = viewport.viewportToImageRectangle(viewport.getBoundsNoRotate(true));
    const d = $("osd").dataset;
    d.bounds = [bounds.x, bounds.y, bounds.width, bounds.height].map((v) => v.toFixed(2)).join(",");
    d.rotation = String(viewport.getRotation());
  }

  function viewQuery() {
    const params = new URLSearchParams(currentView());
    const compare = TSCompare.state();
    if (compare.with.length) {
      params.set("with", compare.with.join(","));
      params.set("off", compare.off);
    }
    if (typeof TSChannels !== "undefined") {
      for (const [name, value] of TSChannels.shared(viewer)) params.set(name, value); // channels.js
    }
    return params;
  }

  function showLink(input, url) {
    input.value = url;
    input.closest(".share-row").classList.remove("hidden");
  }

  /** To the clipboard, saying so after ``note``. */
  async function copy(input, status, note = "") {
    input.select();
    try {
      await navigator.clipboard.writeText(input.value);
      status.textContent = `${note} Copied.`.trim();
    } catch (_) {
      status.textContent = `${note} Select the link and copy it (the browser refused the clipboard).`.trim();
    }
  }

  function refresh() {
    if (!viewer) return;
    const url = new URL(`/view/${slideId}?${viewQuery()}`, location.origin);
    showLink($("share-link"), url.href);
  }

  async function makeSigned() {
    const status = $("share-status");
    const button = $("share-signed");
    status.textContent = "";
    button.classList.add("busy");
    try {
      const response = await fetch(`/api/slides/${slideId}/share?scope=tiles`, {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (response.status === 401) return TS.toLogin();
      if (!response.ok) {
        status.textContent = response.status === 404 || response.status === 403
          ? "You may not make a link for people without an account for this slide."
          : `The server refused a link (${response.status}).`;
        status.className = "share-status error";
        return;
      }
      const made = await response.json();
      const view = currentView();
      const params = new URLSearchParams({ slide: slideId, ...view });
      const url = new URL(`/static/signed.html?${params}&${made.query}`, location.origin);
      showLink($("share-signed-link"), url.href);
      const until = new Date(made.expires).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      status.className = "share-status";
      await copy($("share-signed-link"), status, `Anyone with this link sees this slide until ${until}.`);
    } finally {
      button.classList.remove("busy");
    }
  }

  function togglePanel(force) {
    const show = TSAdjust.showOnly($("share-panel"), force);
    $("share-toggle").setAttribute("aria-pressed", String(show));
    if (show) refresh();
  }

  function wire() {
    if (!$("share-panel")) return;
    $("share-toggle").addEventListener("click", () => togglePanel());
    $("share-close").addEventListener("click", () => togglePanel(false));
    $("share-copy").addEventListener("click", () => {
      refresh();
      $("share-status").className = "share-status";
      copy($("share-link"), $("share-status"));
    });
    $("share-signed").addEventListener("click", makeSigned);
    $("share-signed-copy").addEventListener("click", () => copy($("share-signed-link"), $("share-status")));
    $("share-panel").addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        togglePanel(false);
        $("share-toggle").focus();
      }
      event.stopPropagation();
    });
  }

  wire();
  TSCompare.whenOpen((opened) => {
    viewer = opened;
    const view = viewOf(new URLSearchParams(location.search));
    if (view) goTo(view);
    publish();
    viewer.addHandler("viewport-change", publish);
    viewer.addHandler("animation-finish", () => {
      if (!$("share-panel").classList.contains("hidden")) refresh();
    });
  });
})();
