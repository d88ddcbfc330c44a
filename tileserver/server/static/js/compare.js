/* Side by side: the slide with one to three more slides of its case, each in its own
   OpenSeadragon viewer, pan and zoom locked. /view/ID?with=ID2,ID3 opens it (the URL is the
   share: &off= keeps the offsets), the "Compare" panel chooses the slides.

   The lock is in level-0 physical coordinates: µm when every slide has a pixel size, level-0
   pixels otherwise. Each pane's view centre, in µm and turned by the pane's rotation (so
   "right" on the screen is right in every pane), minus the pane's offset, is one shared
   point W; the scale (screen pixels per µm) is one number. The pane the user works in leads:
   the others are set to W plus their offset at its scale, every frame. Dragging a pane with
   Shift held (or in "Offset" mode, for touch) moves it alone and sets its offset.

   Also the viewer's bridge for the other modules: TSCompare.whenOpen(callback) calls back
   with the slide's OpenSeadragon viewer once it has opened (viewer.js marks body[data-open]). */
"use strict";

const TSCompare = (() => {
  const $ = (id) => document.getElementById(id);
  const slideId = location.pathname.split("/").pop();
  const ID = /^[0-9a-f]{32}$/;
  const MAX_PANES = 4;
  const params = new URLSearchParams(location.search);
  const panes = []; // {id, viewer, element, mpp: [x, y], offset: {x, y}, adjusting, open}
  let leader = null;
  let offsetMode = false;
  let unit = "µm";

  // -- the slide's viewer --------------------------------------------------------------------
  const waiting = [];
  let mainViewer = null;

  function whenOpen(callback) {
    if (mainViewer) callback(mainViewer);
    else waiting.push(callback);
  }

  function watchMain() {
    const found = () => {
      if (document.body.dataset.open !== "true" || mainViewer) return;
      mainViewer = OpenSeadragon.getViewer($("osd"));
      for (const callback of waiting.splice(0)) callback(mainViewer);
    };
    new MutationObserver(found).observe(document.body, {
      attributes: true,
      attributeFilter: ["data-open"],
    });
    found();
  }

  // -- geometry -------------------------------------------------------------------------------
  function rotate(v, degrees) {
    const t = (degrees * Math.PI) / 180;
    const cos = Math.cos(t);
    const sin = Math.sin(t);
    return { x: v.x * cos - v.y * sin, y: v.x * sin + v.y * cos };
  }

  /** The pane's view centre in level-0 pixels. */
  function centrePx(pane) {
    const viewport = pane.viewer.viewport;
    return viewport.viewportToImageCoordinates(viewport.getCenter(true));
  }

  /** The pane's view centre in the shared, screen-aligned frame (µm or pixels). */
  function world(pane) {
    const c = centrePx(pane);
    return rotate({ x: c.x * pane.mpp[0], y: c.y * pane.mpp[1] }, pane.viewer.viewport.getRotation());
  }

  /** Screen pixels per µm (or per level-0 pixel). */
  function scale(pane) {
    const viewport = pane.viewer.viewport;
    return viewport.viewportToImageZoom(viewport.getZoom(true)) / pane.mpp[0];
  }

  /** Shows W + the pane's offset at ``s`` screen pixels per unit, at once. */
  function place(pane, w, s) {
    const viewport = pane.viewer.viewport;
    const local = rotate({ x: w.x + pane.offset.x, y: w.y + pane.offset.y }, -viewport.getRotation());
    const px = new OpenSeadragon.Point(local.x / pane.mpp[0], local.y / pane.mpp[1]);
    viewport.zoomTo(viewport.imageToViewportZoom(s * pane.mpp[0]), null, true);
    viewport.panTo(viewport.imageToViewportCoordinates(px), true);
    publish(pane);
  }

  /** The shared point, as the panes other than ``except`` hold it. */
  function shared(except) {
    const other = panes.find((p) => p !== except && p.open);
    const w = world(other);
    return { x: w.x - other.offset.x, y: w.y - other.offset.y };
  }

  function follow(pane) {
    if (panes.length < 2 || !panes.every((p) => p.open)) return;
    if (pane.adjusting) {
      // Offset mode: this pane moves alone; its offset is where it now is against the rest.
      const w = shared(pane);
      const here = world(pane);
      pane.offset = { x: here.x - w.x, y: here.y - w.y };
      for (const other of panes) if (other !== pane) place(other, w, scale(pane));
    } else {
      const here = world(pane);
      const w = { x: here.x - pane.offset.x, y: here.y - pane.offset.y };
      for (const other of panes) if (other !== pane) place(other, w, scale(pane));
    }
    publish(pane);
  }

  /** Each pane's view, for the tests and for share.js: centre (level-0 px), image zoom,
      rotation, offset. */
  function publish(pane) {
    const c = centrePx(pane);
    const viewport = pane.viewer.viewport;
    const d = pane.element.dataset;
    d.cx = c.x.toFixed(3);
    d.cy = c.y.toFixed(3);
    d.zoom = viewport.viewportToImageZoom(viewport.getZoom(true)).toPrecision(8);
    d.rotation = String(viewport.getRotation());
    d.offset = `${pane.offset.x.toFixed(3)},${pane.offset.y.toFixed(3)}`;
  }

  // -- who leads --------------------------------------------------------------------------------
  function lead(pane, event) {
    leader = pane;
    TSAdjust.target(pane.viewer);
    if (typeof TSChannels !== "undefined") TSChannels.target(pane.viewer); // channels.js
    for (const p of panes) p.element.classList.toggle("active-pane", p === pane);
    if (panes.length > 1 && event && (event.shiftKey || offsetMode) && event.type === "pointerdown") {
      pane.adjusting = true;
      pane.element.classList.add("adjusting");
    }
  }

  function endAdjusting() {
    for (const pane of panes) {
      if (!pane.adjusting) continue;
      const done = () => {
        pane.adjusting = false;
        pane.element.classList.remove("adjusting");
        saveOffsets();
      };
      // After the drag OpenSeadragon may still glide: that is part of the adjustment.
      window.requestAnimationFrame(() => {
        if (pane.viewer.isAnimating()) pane.viewer.addOnceHandler("animation-finish", done);
        else done();
      });
    }
  }

  function wirePane(pane) {
    pane.element.addEventListener("pointerdown", (event) => lead(pane, event), true);
    pane.element.addEventListener("wheel", () => lead(pane), { capture: true, passive: true });
    pane.viewer.addHandler("viewport-change", () => {
      if (pane === leader) follow(pane);
      else if (pane.open) publish(pane);
    });
  }

  // -- the URL ----------------------------------------------------------------------------------
  function others() {
    return panes.slice(1).map((p) => p.id);
  }

  function offsetsParam() {
    const base = panes[0].offset;
    return panes
      .slice(1)
      .map((p) => `${(p.offset.x - base.x).toFixed(2)},${(p.offset.y - base.y).toFixed(2)}`)
      .join(";");
  }

  function saveOffsets() {
    if (panes.length < 2) return;
    const url = new URL(location.href);
    url.searchParams.set("off", offsetsParam());
    history.replaceState(null, "", url.pathname + url.search);
  }

  function parseOffsets(count) {
    const parts = (params.get("off") || "").split(";");
    return Array.from({ length: count }, (_, i) => {
      const [x, y] = (parts[i] || "").split(",").map(Number);
      return Number.isFinite(x) && Number.isFinite(y) ? { x, y } : { x: 0, y: 0 };
    });
  }

  /** The slides to show beside this one: ?with=ID,ID (at most three, each once). */
  function withIds() {
    const ids = [];
    for (const id of (params.get("with") || "").split(",")) {
      if (ID.test(id) && id !== slideId && !ids.includes(id)) ids.push(id);
    }
    return ids.slice(0, MAX_PANES - 1);
  }

  // -- the panes --------------------------------------------------------------------------------
  function mppOf(info) {
    return info && Array.isArray(info.mpp) && info.mpp[0] > 0 && info.mpp[1] > 0 ? info.mpp : null;
  }

  function caption(element, text) {
    element.append(TS.el("div", { class: "pane-caption", text }));
  }

  /** Which slide a pane shows: its block and stain where labelled, else its short ID. */
  function nameOf(id, info) {
    const labels = info ? [info.block, info.stain].filter((v) => typeof v === "string" && v) : [];
    return labels.length ? `${labels.join(" · ")} (${TS.shortId(id)})` : TS.shortId(id);
  }

  function openPane(id, index, info) {
    const element = TS.el("div", {
      class: "osd pane",
      id: `pane-${index}`,
      role: "img",
      "aria-label": `Slide ${index + 1} of the comparison`,
      dataset: { slide: id },
    });
    (index === 1 ? $("osd") : $(`pane-${index - 1}`)).after(element);
    const viewer = OpenSeadragon(TS.viewerOptions({
      element,
      tileSources: `/deepzoom/${id}.dzi${TS.tileQuery(info)}`, // tiles get its query
      navigatorSizeRatio: 0.15,
      maxZoomPixelRatio: 4,
      minZoomImageRatio: 0.05,
      visibilityRatio: 0.1,
      animationTime: 0.45,
      blendTime: 0.05,
      zoomPerScroll: 1.4,
      timeout: 30000,
    }));
    viewer.addHandler("canvas-key", (event) => { event.preventDefaultAction = true; });
    if (typeof TSChannels !== "undefined") TSChannels.attach(viewer, info); // its own display
    caption(element, nameOf(id, info));
    const pane = { id, viewer, element, mpp: [1, 1], offset: { x: 0, y: 0 }, adjusting: false,
                   open: false, info, slot: index };
    panes[index] = pane;
    viewer.addHandler("open", () => {
      pane.open = true;
      element.dataset.open = "true";
      viewer.world.getItemAt(0).addHandler("fully-loaded-change", (event) => {
        element.dataset.fullyLoaded = String(event.fullyLoaded);
      });
      start();
    });
    viewer.addHandler("open-failed", () => {
      // Not found, or not granted (the same 404): the pane says so and leaves the lock.
      element.dataset.open = "failed";
      caption(element, "This slide could not be opened.");
      panes.splice(panes.indexOf(pane), 1);
      start();
    });
    wirePane(pane);
  }

  /** Every pane open: units, offsets from the URL, and the others placed as the slide is. */
  function start() {
    if (!panes.every((p) => p && p.open)) return;
    const mpps = panes.map((p) => mppOf(p.info));
    unit = mpps.every(Boolean) ? "µm" : "px";
    panes.forEach((p, i) => { p.mpp = unit === "µm" ? mpps[i] : [1, 1]; });
    const offsets = parseOffsets(MAX_PANES - 1);
    panes.slice(1).forEach((p) => { p.offset = offsets[p.slot - 1]; });
    document.querySelector(".viewer-main").dataset.unit = unit;
    document.body.dataset.compare = "ready";
    lead(panes[0]);
    follow(panes[0]);
  }

  async function startCompare(ids) {
    const main = document.querySelector(".viewer-main");
    main.dataset.panes = String(ids.length + 1);
    document.body.classList.add("comparing");
    const infos = await Promise.all(
      [slideId, ...ids].map((id) => TS.json(`/api/slides/${id}`).catch(() => null)),
    );
    whenOpen((viewer) => {
      viewer.forceResize(); // its element changed size with the grid
      const element = $("osd");
      caption(element, nameOf(slideId, infos[0]));
      panes[0] = { id: slideId, viewer, element, mpp: [1, 1], offset: { x: 0, y: 0 },
                   adjusting: false, open: true, info: infos[0] };
      wirePane(panes[0]);
      ids.forEach((id, i) => openPane(id, i + 1, infos[i + 1]));
      // The viewer's keys and its magnification buttons act on the slide's viewer: it leads.
      document.addEventListener("keydown", (event) => {
        if (!event.target.closest || !event.target.closest("input, .side-panel")) lead(panes[0]);
      }, true);
      $("topbar").addEventListener("click", (event) => {
        if (event.target.closest(".zoombar, #fit")) lead(panes[0]);
      }, true);
      window.addEventListener("pointerup", endAdjusting);
      window.addEventListener("pointercancel", endAdjusting);
    });
  }

  // -- the panel ---------------------------------------------------------------------------------
  function togglePanel(force) {
    const show = TSAdjust.showOnly($("compare-panel"), force);
    $("compare-toggle").setAttribute("aria-pressed", String(show));
  }

  function setOffsetMode(on) {
    offsetMode = on;
    $("compare-offset").setAttribute("aria-pressed", String(on));
    document.body.classList.toggle("offset-mode", on);
  }

  async function fillChoices() {
    const list = $("compare-choices");
    let cases = [];
    try {
      cases = (await TS.cases()).cases || []; // the page's one request (common.js)
    } catch (_) { /* the panel says there is nothing to compare */ }
    const found = cases.find((c) => c.slides.includes(slideId));
    const chosen = withIds();
    const candidates = found ? found.slides.filter((id) => id !== slideId) : [];
    list.replaceChildren(...candidates.map((id) => TS.el("label", { class: "choice" },
      TS.el("input", { type: "checkbox", value: id, checked: chosen.includes(id) }),
      TS.el("span", { class: "mono", text: TS.shortId(id) }))));
    if (!candidates.length) list.append(TS.el("p", { class: "hint", text: "No other slide in this case." }));
    const limit = () => {
      const boxes = [...list.querySelectorAll("input")];
      const full = boxes.filter((b) => b.checked).length >= MAX_PANES - 1;
      for (const box of boxes) box.disabled = full && !box.checked;
    };
    list.addEventListener("change", limit);
    limit();
  }

  function wirePanel() {
    $("compare-toggle").addEventListener("click", () => togglePanel());
    $("compare-close").addEventListener("click", () => togglePanel(false));
    $("compare-apply").addEventListener("click", () => {
      const ids = [...$("compare-choices").querySelectorAll("input:checked")].map((b) => b.value);
      location.assign(ids.length ? `/view/${slideId}?with=${ids.join(",")}` : `/view/${slideId}`);
    });
    $("compare-offset").addEventListener("click", () => setOffsetMode(!offsetMode));
    $("compare-align").addEventListener("click", () => {
      for (const pane of panes) pane.offset = { x: 0, y: 0 };
      if (panes.length > 1 && panes.every((p) => p.open)) follow(panes[0]);
      saveOffsets();
    });
    $("compare-panel").addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        togglePanel(false);
        $("compare-toggle").focus();
      }
      event.stopPropagation();
    });
    fillChoices();
  }

  /** A pane turned (adjust.js): it turns about its centre, and the others stay put. */
  function turned(viewer) {
    const pane = panes.find((p) => p && p.viewer === viewer);
    if (!pane || panes.length < 2 || !panes.every((p) => p.open)) return;
    const w = shared(pane);
    const here = world(pane);
    pane.offset = { x: here.x - w.x, y: here.y - w.y };
    publish(pane);
    saveOffsets();
  }

  function init() {
    if (typeof OpenSeadragon === "undefined" || !ID.test(slideId)) return;
    watchMain();
    whenOpen((viewer) => {
      if (!panes.length) TSAdjust.target(viewer);
    });
    TSAdjust.onChange(turned);
    if ($("compare-panel")) wirePanel();
    const ids = withIds();
    document.body.classList.toggle("can-offset", ids.length > 0);
    if (ids.length) startCompare(ids);
  }

  init();

  /** Each pane's slide and view, for share.js (the slide's viewer first). */
  function state() {
    return {
      with: others(),
      off: panes.length > 1 ? offsetsParam() : "",
    };
  }

  return { whenOpen, state };
})();
