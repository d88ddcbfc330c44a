/* Channels panel for fluorescence / multiplex slides and focal planes (issues 15 and 17):
   per channel a visibility toggle, a colour and a display window (start and end sliders in
   the slide's sample values); for a slide with several focal planes, a plane slider. Each
   change rebuilds the DeepZoom tile URLs with the server's display parameters
   (channels=, colors=, windows=, z=: protocols/display.py) and reloads the tiles; the
   server composites the chosen channels. The defaults are the slide's stored display
   settings (REST describe: channels[].active/color/window, default_plane).

   viewer.js calls TSChannels.attach(viewer, info) once the slide's viewer exists, compare.js
   for each side-by-side pane (each keeps its own display) and TSChannels.target(viewer) for
   the pane the panel acts on; share.js puts TSChannels.shared(viewer) into its links. The
   tool appears only when a slide on the page has channels or several focal planes. No inline
   styles or scripts (the CSP refuses them). */
"use strict";

const TSChannels = (() => {
  const $ = (id) => document.getElementById(id);
  const APPLY_DELAY_MS = 150; // a slider's drag settles before the tiles are asked for again

  /** The query string (with "?") for ``s``: the whole display, so tile URLs name it. */
  function query(s) {
    const params = new URLSearchParams();
    if (s.channels.length) {
      const on = s.channels.map((c, i) => ({ ...c, i })).filter((c) => c.on);
      params.set("channels", on.map((c) => c.i).join(","));
      params.set("colors", on.map((c) => c.color.replace("#", "")).join(","));
      params.set("windows", on.map((c) => `${c.start}-${c.end}`).join(","));
    }
    if (s.planes > 1) params.set("z", String(s.z));
    return "?" + params.toString().replaceAll("%2C", ",");
  }

  /** A display asked for in the page's address (a shared view: share.js adds ``shared``'s
      parameters to its link) set into ``s``; what does not fit the slide is ignored, so the
      server is never asked for a display it would refuse. True when anything was set. */
  function fromAddress(s, params) {
    let changed = false;
    const n = s.channels.length;
    const list = (name) => (params.get(name) || "").split(",").filter(Boolean);
    const chosen = list("channels").map(Number);
    const valid = chosen.length && chosen.every((c) => Number.isInteger(c) && c >= 0 && c < n)
      && new Set(chosen).size === chosen.length;
    if (valid) {
      s.channels.forEach((c, i) => { c.on = chosen.includes(i); });
      const colors = list("colors");
      if (colors.length === chosen.length && colors.every((c) => /^[0-9a-f]{6}$/i.test(c))) {
        chosen.forEach((c, i) => { s.channels[c].color = hex(colors[i]); });
      }
      const windows = list("windows").map((w) => w.split("-").map(Number));
      const fits = ([a, b]) => Number.isInteger(a) && Number.isInteger(b) && a >= 0 && a < b && b <= s.max;
      if (windows.length === chosen.length && windows.every(fits)) {
        chosen.forEach((c, i) => { [s.channels[c].start, s.channels[c].end] = windows[i]; });
      }
      changed = true;
    }
    const z = Number(params.get("z"));
    if (params.has("z") && Number.isInteger(z) && z >= 0 && z < s.planes) {
      s.z = z;
      changed = true;
    }
    return changed;
  }

  /** The parameters of ``viewer``'s display when it differs from the stored one (share.js). */
  function shared(viewer) {
    const s = registry.get(viewer);
    if (!s || query(s) === query({ ...initial(s.info), info: s.info })) return [];
    return [...new URLSearchParams(query(s).slice(1))];
  }

  /** Tiles of every item showing this source (the slide and its overview map) are dropped and
      asked for again under the new URLs: the tile matrix is rebuilt so each tile gets its URL
      from the source again (OpenSeadragon keeps a tile's URL from when it was made). */
  function reload(viewer, s) {
    const items = [];
    for (const world of [viewer.world, viewer.navigator && viewer.navigator.world]) {
      if (!world) continue;
      for (let i = 0; i < world.getItemCount(); i++) items.push(world.getItemAt(i));
    }
    const extra = query(s);
    for (const item of items) {
      const source = item.source;
      if (source.baseQuery === undefined) source.baseQuery = source.queryParams || "";
      const base = String(source.baseQuery);
      source.queryParams = base ? `${base}&${extra.slice(1)}` : extra;
      item.reset();
      item.tilesMatrix = {};
    }
    viewer.forceRedraw();
  }

  function hex(color) {
    return "#" + String(color || "ffffff").toLowerCase();
  }

  function initial(info) {
    const channels = (info.channels || []).map((c) => ({
      name: c.name,
      on: Boolean(c.active),
      color: hex(c.color),
      start: Math.round(c.window[0]),
      end: Math.round(c.window[1]),
    }));
    // None marked active: the server then shows them all (protocols/display.py).
    if (!channels.some((c) => c.on)) channels.forEach((c) => { c.on = true; });
    const planes = (info.planes || []).length;
    return {
      channels,
      planes,
      offsets: info.planes || [],
      z: info.default_plane || 0,
      max: info.dtype === "uint16" ? 65535 : 255,
    };
  }

  // -- the panel ---------------------------------------------------------------------------
  function field(label, input, output) {
    const node = TS.el("label", {}, [label, " "]);
    if (output) node.append(output);
    node.append(input);
    return node;
  }

  function channelRow(s, channel, index, schedule) {
    const row = TS.el("fieldset", { class: "channel", "data-channel": String(index) });
    const visible = TS.el("input", {
      type: "checkbox",
      id: `channel-${index}-on`,
      "aria-label": `Show ${channel.name}`,
    });
    visible.checked = channel.on;
    const color = TS.el("input", {
      type: "color",
      id: `channel-${index}-color`,
      "aria-label": `Colour of ${channel.name}`,
    });
    color.value = channel.color;
    const legend = TS.el("legend", {}, [visible, " ", channel.name, " ", color]);
    const startOut = TS.el("output", { id: `channel-${index}-start-value` });
    const endOut = TS.el("output", { id: `channel-${index}-end-value` });
    const range = { type: "range", min: "0", max: String(s.max), step: "1" };
    const start = TS.el("input", { ...range, id: `channel-${index}-start` });
    const end = TS.el("input", { ...range, id: `channel-${index}-end` });
    const show = () => {
      start.value = String(channel.start);
      end.value = String(channel.end);
      startOut.textContent = String(channel.start);
      endOut.textContent = String(channel.end);
      row.classList.toggle("off", !channel.on);
    };
    show();
    visible.addEventListener("change", () => {
      // At least one channel stays on: the server composites a non-empty set.
      if (!visible.checked && s.channels.filter((c) => c.on).length === 1) {
        visible.checked = true;
        return;
      }
      channel.on = visible.checked;
      show();
      schedule();
    });
    color.addEventListener("input", () => {
      channel.color = color.value;
      schedule();
    });
    start.addEventListener("input", () => {
      channel.start = Math.min(Number(start.value), channel.end - 1);
      show();
      schedule();
    });
    end.addEventListener("input", () => {
      channel.end = Math.max(Number(end.value), channel.start + 1);
      show();
      schedule();
    });
    const window_ = TS.el("div", { class: "window-row" }, [
      field("Window start", start, startOut),
      field("end", end, endOut),
    ]);
    row.append(legend, window_);
    return row;
  }

  function planeRow(s, schedule) {
    const out = TS.el("output", { id: "channel-z-value" });
    const input = TS.el("input", {
      type: "range", id: "channel-z", min: "0", max: String(s.planes - 1), step: "1",
    });
    input.value = String(s.z);
    const show = () => {
      const offset = s.offsets[s.z];
      out.textContent = `${s.z + 1} / ${s.planes}` +
        (Number.isFinite(offset) ? ` (${offset >= 0 ? "+" : ""}${offset} µm)` : "");
    };
    show();
    input.addEventListener("input", () => {
      s.z = Number(input.value);
      show();
      schedule();
    });
    return field("Focal plane", input, out);
  }

  function buildPanel(viewer, s) {
    const panel = TS.el("section", {
      id: "channel-panel",
      class: "side-panel hidden",
      "aria-labelledby": "channel-title",
    });
    const close = TS.el("button", { type: "button", id: "channel-close", class: "ghost", text: "Close" });
    close.addEventListener("click", () => toggle(false));
    // Keys typed into the controls are theirs (arrows on sliders), not the viewer's shortcuts.
    panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        toggle(false);
        $("channel-toggle").focus();
      }
      event.stopPropagation();
    });
    if (!s) { // side by side: the active slide is an RGB single-plane one
      panel.append(
        TS.el("h2", { id: "channel-title", text: "Channels" }),
        TS.el("p", { class: "hint", text: "The active slide has no channels or focal planes." }),
        TS.el("div", { class: "panel-row" }, [close]),
      );
      return panel;
    }
    let timer = null;
    const schedule = () => {
      window.clearTimeout(timer);
      timer = window.setTimeout(() => reload(viewer, s), APPLY_DELAY_MS);
    };
    panel.append(TS.el("h2", { id: "channel-title", text: s.channels.length ? "Channels" : "Focal plane" }));
    if (s.planes > 1) panel.append(planeRow(s, schedule));
    s.channels.forEach((channel, index) => panel.append(channelRow(s, channel, index, schedule)));
    const reset = TS.el("button", { type: "button", id: "channel-reset", text: "Reset" });
    panel.append(TS.el("div", { class: "panel-row" }, [reset, close]));
    reset.addEventListener("click", () => {
      Object.assign(s, initial(s.info));
      rebuild();
      reload(viewer, s);
    });
    return panel;
  }

  function toggle(force) {
    const panel = $("channel-panel");
    const show = TSAdjust.showOnly(panel, force);
    $("channel-toggle").setAttribute("aria-pressed", String(show));
  }

  // -- viewers: the slide's, and side-by-side panes (compare.js), each with its own display --
  const registry = new Map(); // viewer -> its state, or null (RGB, one plane)
  let current = null; // the viewer the panel acts on

  /** The panel again, for the current viewer, shown or hidden as it was. */
  function rebuild() {
    const old = $("channel-panel");
    if (!$("channel-toggle")) return; // no channel or z-stack slide on the page
    const panel = buildPanel(current, registry.get(current) || null);
    if (old) {
      panel.classList.toggle("hidden", old.classList.contains("hidden"));
      old.replaceWith(panel);
    } else {
      const adjust = $("adjust-panel");
      if (adjust) adjust.before(panel);
      else document.querySelector("main").append(panel);
    }
  }

  function showButton(s) {
    let button = $("channel-toggle");
    if (!button) {
      button = TS.el("button", {
        type: "button",
        id: "channel-toggle",
        class: "tool",
        "aria-pressed": "false",
        "aria-controls": "channel-panel",
      });
      button.addEventListener("click", () => toggle());
      const anchor = $("adjust-toggle");
      if (anchor) anchor.before(button);
      else $("menu").prepend(button);
    }
    const channels = s.channels.length || button.textContent === "Channels";
    button.textContent = channels ? "Channels" : "Focus";
    button.title = channels ? "Channels: visibility, colour, window; focal plane" : "Focal plane";
  }

  /** ``viewer`` shows the slide ``info`` (REST describe; null: unknown) describes. A channel or
      multi-plane slide brings the tool's button; the tiles start at the stored defaults, which
      is what the server gives without parameters, so nothing is reloaded until the user acts.
      The first viewer attached (the slide's) is the panel's until ``target`` says otherwise. */
  function attach(viewer, info) {
    const s = info ? { ...initial(info), info } : null;
    const useful = Boolean(s && (s.channels.length || s.planes > 1));
    registry.set(viewer, useful ? s : null);
    if (!current) {
      current = viewer; // the slide's own viewer: a shared view's display is for it
      if (useful && fromAddress(s, new URLSearchParams(location.search))) {
        if (viewer.world.getItemCount()) reload(viewer, s);
        else viewer.world.addOnceHandler("add-item", () => reload(viewer, s));
      }
    }
    if (useful) {
      showButton(s);
      document.body.dataset.channels = String(Math.max(
        Number(document.body.dataset.channels || 0), s.channels.length));
    }
    if (viewer === current || !$("channel-panel")) rebuild();
  }

  /** The panel acts on ``viewer`` from now on (compare.js: the pane last touched). */
  function target(viewer) {
    if (viewer === current) return;
    current = viewer;
    rebuild();
  }

  return { attach, target, query, shared, registry };
})();
