/* Image adjustments: brightness, contrast and gamma as an SVG filter on an OpenSeadragon
   viewer's drawing canvas (the pixels are not touched: no read-back, no re-render), and
   rotation by 90° steps or freely (OpenSeadragon's viewport rotation). Each viewer keeps its
   own settings; the panel (#adjust-panel) shows and changes those of the target viewer: the
   slide's viewer, or the side-by-side pane last touched (compare.js calls TSAdjust.target).

   The filter is one feComponentTransfer per channel, out = a·in^e + o, which holds all three:
   gamma g brightens the mid-tones for g > 1 (e = 1/g), then brightness b scales and contrast c
   stretches around mid-grey (a = c·b, o = (1 − c)/2). The CSP allows it: the filter is SVG
   in the page's own DOM, referenced by id; styles are set through the CSSOM, never inline. */
"use strict";

const TSAdjust = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const NEUTRAL = Object.freeze({ brightness: 1, contrast: 1, gamma: 1, rotation: 0 });
  const LIMITS = {
    brightness: [0.2, 3],
    contrast: [0.2, 4],
    gamma: [0.2, 5],
  };
  const settings = new WeakMap(); // viewer -> its settings
  const filters = new WeakMap(); // viewer -> its <filter>
  let counter = 0;
  let current = null; // the viewer the panel acts on
  const listeners = [];

  function defs() {
    let svg = document.getElementById("adjust-filters");
    if (!svg) {
      svg = document.createElementNS(SVG, "svg");
      svg.id = "adjust-filters";
      svg.setAttribute("class", "adjust-filters");
      svg.setAttribute("aria-hidden", "true");
      document.body.append(svg);
    }
    return svg;
  }

  function filterOf(viewer) {
    let filter = filters.get(viewer);
    if (!filter) {
      counter += 1;
      filter = document.createElementNS(SVG, "filter");
      filter.id = `adjust-${counter}`;
      // The stain's sRGB values, not linear light (the SVG default would darken mid-tones).
      filter.setAttribute("color-interpolation-filters", "sRGB");
      const transfer = document.createElementNS(SVG, "feComponentTransfer");
      for (const channel of ["R", "G", "B"]) {
        const fn = document.createElementNS(SVG, `feFunc${channel}`);
        fn.setAttribute("type", "gamma");
        transfer.append(fn);
      }
      filter.append(transfer);
      defs().append(filter);
      filters.set(viewer, filter);
    }
    return filter;
  }

  function clamp(name, value) {
    const [lo, hi] = LIMITS[name];
    const number = Number(value);
    return Number.isFinite(number) ? Math.min(hi, Math.max(lo, number)) : NEUTRAL[name];
  }

  /** Degrees in (-180, 180]. */
  function normalAngle(degrees) {
    const number = Number(degrees);
    if (!Number.isFinite(number)) return 0;
    const angle = ((number % 360) + 360) % 360;
    return angle > 180 ? angle - 360 : angle;
  }

  function get(viewer) {
    return { ...NEUTRAL, ...(settings.get(viewer) || {}) };
  }

  function isNeutral(s) {
    return s.brightness === 1 && s.contrast === 1 && s.gamma === 1;
  }

  /** Changes ``viewer``'s settings (any subset) and shows them. */
  function set(viewer, changes) {
    const next = get(viewer);
    for (const name of ["brightness", "contrast", "gamma"]) {
      if (name in changes) next[name] = clamp(name, changes[name]);
    }
    if ("rotation" in changes) next.rotation = normalAngle(changes.rotation);
    settings.set(viewer, next);
    const canvas = viewer.drawer && viewer.drawer.canvas;
    if (canvas) {
      if (isNeutral(next)) {
        canvas.style.filter = ""; // no filter pass at all when nothing is adjusted
      } else {
        const filter = filterOf(viewer);
        for (const fn of filter.firstChild.children) {
          fn.setAttribute("amplitude", String(next.contrast * next.brightness));
          fn.setAttribute("exponent", String(1 / next.gamma));
          fn.setAttribute("offset", String((1 - next.contrast) / 2));
        }
        canvas.style.filter = `url(#${filter.id})`;
      }
    }
    if (viewer.viewport && normalAngle(viewer.viewport.getRotation()) !== next.rotation) {
      viewer.viewport.setRotation(next.rotation, true);
    }
    if (viewer === current) showPanel();
    for (const listener of listeners) listener(viewer, next);
    return next;
  }

  // -- the panel -----------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  const FIELDS = ["brightness", "contrast", "gamma", "rotation"];

  function format(name, value) {
    return name === "rotation" ? `${Math.round(value)}°` : `${Number(value).toFixed(2)}`;
  }

  function showPanel() {
    if (!current || !$("adjust-panel")) return;
    const s = get(current);
    for (const name of FIELDS) {
      const input = $(`adjust-${name}`);
      if (input && document.activeElement !== input) input.value = String(s[name]);
      const out = $(`adjust-${name}-value`);
      if (out) out.textContent = format(name, s[name]);
    }
  }

  /** Shows or hides one of the tools' side panels; showing one hides the others (they share
      the corner). Returns whether it shows. */
  function showOnly(panel, force) {
    const show = force === undefined ? panel.classList.contains("hidden") : force;
    for (const other of document.querySelectorAll(".side-panel")) {
      if (other === panel || !show || other.classList.contains("hidden")) continue;
      other.classList.add("hidden");
      const toggle = document.querySelector(`[aria-controls="${other.id}"]`);
      if (toggle) toggle.setAttribute("aria-pressed", "false");
    }
    panel.classList.toggle("hidden", !show);
    return show;
  }

  function togglePanel(force) {
    const show = showOnly($("adjust-panel"), force);
    $("adjust-toggle").setAttribute("aria-pressed", String(show));
    if (show) showPanel();
  }

  function wirePanel() {
    if (!$("adjust-panel")) return;
    $("adjust-toggle").addEventListener("click", () => togglePanel());
    $("adjust-close").addEventListener("click", () => togglePanel(false));
    for (const name of FIELDS) {
      $(`adjust-${name}`).addEventListener("input", (event) => {
        if (current) set(current, { [name]: Number(event.target.value) });
      });
    }
    $("rotate-left").addEventListener("click", () => {
      if (current) set(current, { rotation: Math.round(get(current).rotation / 90) * 90 - 90 });
    });
    $("rotate-right").addEventListener("click", () => {
      if (current) set(current, { rotation: Math.round(get(current).rotation / 90) * 90 + 90 });
    });
    $("adjust-reset").addEventListener("click", () => {
      if (current) set(current, NEUTRAL);
    });
    // Keys typed into the sliders are theirs (arrows), not the viewer's pan shortcuts.
    $("adjust-panel").addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        togglePanel(false);
        $("adjust-toggle").focus();
      }
      event.stopPropagation();
    });
  }

  /** The viewer the panel acts on. */
  function target(viewer) {
    current = viewer;
    showPanel();
  }

  /** ``listener(viewer, settings)`` after every change (compare.js re-locks a rotated pane). */
  function onChange(listener) {
    listeners.push(listener);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", wirePanel);
  } else {
    wirePanel();
  }

  return { NEUTRAL, get, set, target, onChange, normalAngle, showOnly };
})();
