/* Annotations on the slide: draw points, polylines, polygons, rectangles and ellipses, label and
   colour them, share them with the case, reshape them by their handles; a list with the
   server's measurements; import and export GeoJSON. The server keeps them (REST API, docs/annotations.md): coordinates are
   level-0 pixels, every edit a new version, a delete a tombstone.

   Drawn on our own SVG layer over OpenSeadragon, as the ruler is: Annotorious 3 (the
   OpenSeadragon annotation library) renders with PixiJS/WebGL, whose shader system needs
   'unsafe-eval', and its editors set style attributes; both are refused by the viewer's CSP.
   Text (labels, authors, messages) is always set as textContent, never parsed as HTML. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const slideId = location.pathname.split("/").pop();
  const base = `/api/slides/${slideId}/annotations`;
  const TOOLS = [
    ["point", "Point", "Click to place"],
    ["polyline", "Line", "Click each vertex; double-click or Enter to finish"],
    ["polygon", "Polygon", "Click each vertex; double-click or Enter to close"],
    ["rectangle", "Rectangle", "Drag a corner to the opposite corner"],
    ["ellipse", "Ellipse", "Drag across the ellipse's bounding box"],
  ];
  const ELLIPSE_VERTICES = 64;
  const NEAR_PX = 4; // a click this close to the previous vertex adds none (double-click)
  const HANDLE_PX = 9; // a press this close to a handle of the selected annotation drags it

  let viewer = null;
  let panel = null;
  let tool = null; // the active drawing tool's name
  let draft = null; // {points: [{x, y}] in level-0 px, moving: {x, y} | null}
  let selected = null; // the selected annotation's ID
  let moving = null; // a handle being dragged: {feature, index, geometry}
  const items = new Map(); // id -> the server's Feature

  function node(tag, attrs) {
    const element = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) element.setAttribute(key, String(value));
    return element;
  }

  function say(text, kind = "info") {
    const hint = $("annotation-status");
    hint.textContent = text;
    hint.dataset.kind = kind;
  }

  // -- the server ----------------------------------------------------------------------------
  async function errorOf(response) {
    try {
      return (await response.json()).error || response.statusText;
    } catch (_) {
      return response.statusText || `HTTP ${response.status}`;
    }
  }

  async function send(method, path, body, headers = {}) {
    const response = await TS.api(path, {
      method,
      headers: { "Content-Type": "application/json", ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) throw new TS.HttpError(response.status, await errorOf(response));
    return response.status === 204 ? null : response.json();
  }

  async function load() {
    try {
      const collection = await TS.json(base);
      items.clear();
      for (const feature of collection.features || []) items.set(feature.id, feature);
      if (selected && !items.has(selected)) selected = null;
      render();
      document.body.dataset.annotations = String(items.size);
    } catch (error) {
      if (error.status !== 401) say(`Annotations could not be loaded: ${error.message}`, "error");
    }
  }

  function properties() {
    return {
      label: $("annotation-label").value.trim(),
      color: $("annotation-color").value,
      shared: $("annotation-shared").checked,
    };
  }

  async function create(shape, geometry) {
    const feature = { type: "Feature", geometry, properties: { ...properties(), shape } };
    try {
      const saved = await send("POST", base, feature);
      items.set(saved.id, saved);
      selected = null;
      render();
      say(`${names(shape)} saved.`);
    } catch (error) {
      say(`Not saved: ${error.message}`, "error");
    }
  }

  async function saveSelected() {
    const current = items.get(selected);
    if (!current) return;
    const shape = current.properties.shape;
    const body = { type: "Feature", geometry: current.geometry, properties: { ...properties(), shape } };
    try {
      const saved = await send("PUT", `${base}/${current.id}`, body,
                               { "If-Match": `"${current.properties.version}"` });
      items.set(saved.id, saved);
      render();
      say("Changes saved.");
    } catch (error) {
      if (error.status === 412) {
        say("It was changed elsewhere meanwhile: reloaded, nothing overwritten.", "error");
        await load();
      } else {
        say(`Not saved: ${error.message}`, "error");
      }
    }
  }

  async function remove(id) {
    const current = items.get(id);
    if (!current) return;
    try {
      await send("DELETE", `${base}/${id}`, undefined,
                 { "If-Match": `"${current.properties.version}"` });
      items.delete(id);
      if (selected === id) select(null);
      render();
      say("Deleted (its versions are kept on the server).");
    } catch (error) {
      say(`Not deleted: ${error.message}`, "error");
      if (error.status === 412) await load();
    }
  }

  async function importFile(file) {
    let body;
    try {
      body = JSON.parse(await file.text());
    } catch (_) {
      say("Not imported: the file is not JSON.", "error");
      return;
    }
    try {
      await send("POST", base, body, { "Content-Type": "application/geo+json" });
      await load();
      say(`Imported ${file.name}.`);
    } catch (error) {
      say(`Not imported: ${error.message}`, "error");
    }
  }

  // -- geometry ------------------------------------------------------------------------------
  const round = (p) => [Math.round(p.x * 1000) / 1000, Math.round(p.y * 1000) / 1000];

  function geometryOf(shape, points) {
    if (shape === "point") return { type: "Point", coordinates: round(points[0]) };
    if (shape === "polyline") return { type: "LineString", coordinates: points.map(round) };
    let ring = points;
    if (shape === "rectangle" || shape === "ellipse") {
      const [a, b] = points;
      const [x0, x1] = [Math.min(a.x, b.x), Math.max(a.x, b.x)];
      const [y0, y1] = [Math.min(a.y, b.y), Math.max(a.y, b.y)];
      if (shape === "rectangle") {
        ring = [{ x: x0, y: y0 }, { x: x1, y: y0 }, { x: x1, y: y1 }, { x: x0, y: y1 }];
      } else {
        const [cx, cy, rx, ry] = [(x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2];
        ring = [];
        for (let i = 0; i < ELLIPSE_VERTICES; i++) {
          const t = (2 * Math.PI * i) / ELLIPSE_VERTICES;
          ring.push({ x: cx + rx * Math.cos(t), y: cy + ry * Math.sin(t) });
        }
      }
    }
    const closed = ring.map(round);
    closed.push(closed[0]);
    return { type: "Polygon", coordinates: [closed] };
  }

  /** Every ring or line of a geometry as lists of {x, y} in level-0 pixels. */
  function partsOf(geometry) {
    const toPoint = ([x, y]) => ({ x, y });
    if (geometry.type === "Point") return [[toPoint(geometry.coordinates)]];
    if (geometry.type === "LineString") return [geometry.coordinates.map(toPoint)];
    return geometry.coordinates.map((ring) => ring.map(toPoint));
  }

  /** The handles of a shape one may drag: its vertices; a rectangle's and an ellipse's
      box corners (the opposite corner stays). */
  function handlesOf(feature) {
    const shape = feature.properties.shape;
    const first = partsOf(feature.geometry)[0];
    if (shape === "point" || shape === "polyline") return first;
    if (shape === "rectangle" || shape === "ellipse") {
      const xs = first.map((p) => p.x);
      const ys = first.map((p) => p.y);
      const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
      return [{ x: x0, y: y0 }, { x: x1, y: y0 }, { x: x1, y: y1 }, { x: x0, y: y1 }];
    }
    return first.slice(0, -1); // the exterior ring without its closing position
  }

  /** ``feature``'s geometry with handle ``index`` moved to ``p``. */
  function edited(feature, index, p) {
    const shape = feature.properties.shape;
    const handles = handlesOf(feature);
    if (shape === "rectangle" || shape === "ellipse") {
      return geometryOf(shape, [p, handles[(index + 2) % 4]]);
    }
    handles[index] = p;
    if (shape === "point" || shape === "polyline") return geometryOf(shape, handles);
    const geometry = geometryOf("polygon", handles);
    geometry.coordinates.push(...feature.geometry.coordinates.slice(1)); // holes as they were
    return geometry;
  }

  async function saveGeometry(feature, geometry) {
    const props = feature.properties;
    const body = { type: "Feature", geometry, properties: {
      label: props.label, color: props.color, shared: props.shared, shape: props.shape } };
    try {
      const saved = await send("PUT", `${base}/${feature.id}`, body,
                               { "If-Match": `"${props.version}"` });
      items.set(saved.id, saved);
      say("Moved.");
    } catch (error) {
      say(`Not moved: ${error.message}`, "error");
      if (error.status === 412) await load();
    }
    render();
  }

  // -- measurements --------------------------------------------------------------------------
  function area(um2, px2) {
    if (um2 === undefined) return `${TS.formatCount(Math.round(px2))} px²`;
    if (um2 >= 1e6) return `${(um2 / 1e6).toPrecision(3)} mm²`;
    return `${um2 >= 100 ? TS.formatCount(Math.round(um2)) : um2.toPrecision(3)} µm²`;
  }

  function length(um, px) {
    return um === undefined ? `${TS.formatCount(Math.round(px))} px` : TS.formatLength(um);
  }

  function measurementText(m) {
    if (!m) return "";
    if (m.length_px !== undefined) return length(m.length_um, m.length_px);
    if (m.area_px2 !== undefined) {
      return `${area(m.area_um2, m.area_px2)} · perimeter ${length(m.perimeter_um, m.perimeter_px)}`;
    }
    return "";
  }

  const names = (shape) => (TOOLS.find(([name]) => name === shape) || [shape, shape])[1];

  // -- drawing on the slide --------------------------------------------------------------------
  function toScreen(p) {
    return viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(p.x, p.y));
  }

  function drawShape(layer, shape, parts, color, classes) {
    const screen = parts.map((part) => part.map(toScreen));
    const paint = { stroke: color, class: classes };
    if (shape === "point") {
      const p = screen[0][0];
      layer.append(node("circle", { cx: p.x, cy: p.y, r: 6, fill: color, ...paint }));
      return p;
    }
    const list = (part) => part.map((p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
    if (shape === "polyline") {
      layer.append(node("polyline", { points: list(screen[0]), fill: "none", ...paint }));
    } else {
      const d = screen.map((part) => "M" + list(part) + "Z").join(" ");
      layer.append(node("path", { d, fill: color, "fill-rule": "evenodd", ...paint }));
    }
    return screen[0][0];
  }

  const render = () => { renderLayer(); renderList(); };

  function renderLayer() {
    const layer = $("annotation-layer");
    if (!layer || !viewer || viewer.world.getItemCount() === 0) return;
    layer.replaceChildren();
    for (const feature of items.values()) {
      const props = feature.properties;
      const classes = "annotation-shape" + (feature.id === selected ? " selected" : "");
      const geometry = moving && moving.feature === feature ? moving.geometry : feature.geometry;
      const anchor = drawShape(layer, props.shape, partsOf(geometry), props.color, classes);
      if (props.label) {
        const text = node("text", { x: anchor.x + 8, y: anchor.y - 8, class: "annotation-text" });
        text.textContent = props.label;
        layer.append(text);
      }
    }
    const chosen = items.get(selected);
    if (chosen && chosen.properties.own && !tool) {
      const shown = moving ? { ...chosen, geometry: moving.geometry } : chosen;
      handlesOf(shown).forEach((p, index) => {
        const at = toScreen(p);
        layer.append(node("rect", { x: at.x - 5, y: at.y - 5, width: 10, height: 10,
                                    class: "annotation-handle", "data-index": index }));
      });
    }
    if (draft && draft.points.length) {
      const points = draft.moving ? [...draft.points, draft.moving] : draft.points;
      const shape = tool === "polygon" && points.length < 3 ? "polyline" : tool;
      const parts = shape === "polyline" || shape === "point"
        ? [points] : partsOf(geometryOf(shape, points));
      drawShape(layer, shape, parts, $("annotation-color").value, "annotation-shape draft");
    }
  }

  function imagePoint(position) {
    const p = viewer.viewport.viewerElementToImageCoordinates(position);
    return { x: p.x, y: p.y };
  }

  function near(a, b, limit = NEAR_PX) {
    const [p, q] = [toScreen(a), toScreen(b)];
    return Math.hypot(p.x - q.x, p.y - q.y) < limit;
  }

  function finish() {
    if (!draft) return;
    const points = draft.points;
    const enough = tool === "polygon" ? 3 : 2;
    draft = null;
    if (points.length >= enough) create(tool, geometryOf(tool, points));
    else say(`A ${names(tool).toLowerCase()} needs ${enough} points or more.`, "error");
    renderLayer();
  }

  function cancel() {
    draft = null;
    renderLayer();
    say("Drawing cancelled.");
  }

  function wireCanvas() {
    const drawing = () => tool !== null;
    const dragTool = () => tool === "rectangle" || tool === "ellipse";
    viewer.addHandler("canvas-press", (event) => {
      const chosen = items.get(selected);
      if (!tool && chosen && chosen.properties.own) {
        const p = imagePoint(event.position);
        const index = handlesOf(chosen).findIndex((h) => near(h, p, HANDLE_PX));
        if (index >= 0) moving = { feature: chosen, index, geometry: chosen.geometry };
      }
      if (!dragTool()) return;
      const p = imagePoint(event.position);
      draft = { points: [p, p], moving: null };
    });
    viewer.addHandler("canvas-drag", (event) => {
      if (moving) {
        event.preventDefaultAction = true; // the handle moves, not the slide
        moving.geometry = edited(moving.feature, moving.index, imagePoint(event.position));
        renderLayer();
        return;
      }
      if (!dragTool()) return; // a line or polygon is clicked: dragging still pans
      event.preventDefaultAction = true;
      if (draft) {
        draft.points[1] = imagePoint(event.position);
        renderLayer();
      }
    });
    viewer.addHandler("canvas-drag-end", (event) => {
      if (dragTool() || moving) event.preventDefaultAction = true; // no flick
    });
    viewer.addHandler("canvas-release", () => {
      if (moving) {
        const { feature, geometry } = moving;
        moving = null;
        if (geometry !== feature.geometry) saveGeometry(feature, geometry);
        return;
      }
      if (!dragTool() || !draft) return;
      const [a, b] = draft.points;
      if (near(a, b) || Math.abs(toScreen(a).x - toScreen(b).x) < NEAR_PX ||
          Math.abs(toScreen(a).y - toScreen(b).y) < NEAR_PX) {
        draft = null; // a click, not a drag: nothing drawn
        renderLayer();
        return;
      }
      finish();
    });
    viewer.addHandler("canvas-click", (event) => {
      if (!drawing()) return;
      event.preventDefaultAction = true;
      if (!event.quick || dragTool()) return;
      const p = imagePoint(event.position);
      if (tool === "point") {
        create("point", geometryOf("point", [p]));
        return;
      }
      if (!draft) draft = { points: [], moving: null };
      const last = draft.points[draft.points.length - 1];
      if (!last || !near(last, p)) draft.points.push(p);
      renderLayer();
    });
    viewer.addHandler("canvas-double-click", (event) => {
      if (!drawing()) return;
      event.preventDefaultAction = true; // no zoom
      if (tool === "polyline" || tool === "polygon") finish();
    });
    // The next edge follows the pointer (a listener of ours: OpenSeadragon's own tracker
    // owns the canvas).
    viewer.element.addEventListener("pointermove", (event) => {
      if (!draft || dragTool()) return;
      const box = viewer.element.getBoundingClientRect();
      draft.moving = imagePoint(new OpenSeadragon.Point(event.clientX - box.left,
                                                        event.clientY - box.top));
      renderLayer();
    }, true);
    viewer.addHandler("update-viewport", renderLayer);
  }

  // -- the panel -------------------------------------------------------------------------------
  function setTool(name) {
    tool = tool === name ? null : name;
    draft = null;
    for (const button of panel.querySelectorAll("[data-tool]")) {
      button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
    }
    document.body.classList.toggle("annotate-mode", tool !== null);
    const ruler = $("ruler-toggle");
    if (tool && ruler && ruler.getAttribute("aria-pressed") === "true") ruler.click();
    if (tool) {
      select(null);
      say(`${names(tool)}: ${TOOLS.find(([t]) => t === tool)[2]}. Esc cancels.`);
    }
    renderLayer();
  }

  function select(id) {
    selected = id;
    const feature = id ? items.get(id) : null;
    $("annotation-save").disabled = !(feature && feature.properties.own);
    if (feature) {
      if (feature.properties.own) say("Drag a white handle to reshape it.");
      $("annotation-label").value = feature.properties.label || "";
      $("annotation-color").value = feature.properties.color || "#ffd33d";
      $("annotation-shared").checked = Boolean(feature.properties.shared);
    }
    render();
  }

  function goTo(feature) {
    const parts = partsOf(feature.geometry).flat();
    const xs = parts.map((p) => p.x);
    const ys = parts.map((p) => p.y);
    const pad = Math.max(64, (Math.max(...xs) - Math.min(...xs)) * 0.2);
    const rect = viewer.viewport.imageToViewportRectangle(
      Math.min(...xs) - pad, Math.min(...ys) - pad,
      Math.max(...xs) - Math.min(...xs) + 2 * pad, Math.max(...ys) - Math.min(...ys) + 2 * pad);
    viewer.viewport.fitBoundsWithConstraints(rect); // not beyond the 2x over-zoom
  }

  function renderList() {
    const list = $("annotation-list");
    list.replaceChildren();
    for (const feature of items.values()) {
      const props = feature.properties;
      const m = props.measurements || {};
      const name = props.label || names(props.shape);
      const swatch = TS.el("span", { class: "annotation-swatch", "aria-hidden": "true" });
      swatch.style.background = props.color; // CSSOM: allowed under the CSP, unlike style=""
      const item = TS.el("li", {
        class: "annotation-item" + (feature.id === selected ? " selected" : ""),
        dataset: {
          id: feature.id, shape: props.shape, own: String(Boolean(props.own)),
          shared: String(Boolean(props.shared)),
          areaUm2: m.area_um2 === undefined ? "" : String(m.area_um2),
          lengthUm: m.length_um === undefined ? "" : String(m.length_um),
        },
      },
      swatch,
      TS.el("button", {
        type: "button", class: "annotation-name", title: "Select and go to it",
        "aria-pressed": String(feature.id === selected),
        onclick: () => { select(feature.id); goTo(feature); },
        text: name,
      }),
      TS.el("span", { class: "annotation-measure", text: measurementText(m) }),
      TS.el("span", {
        class: "annotation-owner",
        text: props.own ? (props.shared ? "shared" : "private")
          : `shared by ${String(props.author).replace(/^user:/, "")}`,
      }),
      props.own ? TS.el("button", {
        type: "button", class: "annotation-delete", "aria-label": `Delete ${name}`,
        title: "Delete", onclick: () => remove(feature.id), text: "✕",
      }) : null);
      list.append(item);
    }
    $("annotation-count").textContent = `${items.size}`;
    document.body.dataset.annotations = String(items.size);
  }

  function buildPanel() {
    const importInput = TS.el("input", {
      type: "file", id: "annotation-import", accept: ".geojson,.json,application/geo+json",
      class: "hidden", "aria-hidden": "true", tabindex: "-1",
      onchange: (event) => {
        const [file] = event.target.files;
        if (file) importFile(file);
        event.target.value = "";
      },
    });
    panel = TS.el("aside", { id: "annotations", class: "annotations hidden",
                             "aria-labelledby": "annotations-title" },
      TS.el("h2", { id: "annotations-title" }, "Annotations ",
            TS.el("span", { id: "annotation-count", class: "count" }, "0")),
      TS.el("div", { class: "annotation-tools", role: "group", "aria-label": "Drawing tools" },
        TOOLS.map(([name, label, how]) => TS.el("button", {
          type: "button", class: "tool", "data-tool": name, "aria-pressed": "false",
          title: how, onclick: () => setTool(name), text: label,
        }))),
      TS.el("label", { for: "annotation-label" }, "Label"),
      TS.el("input", { id: "annotation-label", type: "text", maxlength: "200",
                       placeholder: "e.g. tumour margin", autocomplete: "off" }),
      TS.el("div", { class: "annotation-row" },
        TS.el("label", { for: "annotation-color" }, "Colour"),
        TS.el("input", { id: "annotation-color", type: "color", value: "#ffd33d" }),
        TS.el("label", { class: "check" },
          TS.el("input", { id: "annotation-shared", type: "checkbox" }), " Shared with the case"),
      ),
      TS.el("button", { id: "annotation-save", type: "button", disabled: true,
                        title: "Save the label, colour and sharing of the selected annotation",
                        onclick: saveSelected, text: "Save changes" }),
      TS.el("p", { id: "annotation-status", class: "hint", role: "status" }),
      TS.el("ul", { id: "annotation-list", class: "annotation-list" }),
      TS.el("div", { class: "annotation-row" },
        TS.el("span", { class: "hint", text: "GeoJSON" }),
        TS.el("a", { id: "annotation-export", class: "button", href: `${base}.geojson`,
                     download: `${slideId}-annotations.geojson`, text: "Export",
                     title: "Download what you see as GeoJSON (level-0 pixels, as QuPath)",
                     "aria-label": "Export GeoJSON" }),
        TS.el("button", { id: "annotation-import-button", type: "button", text: "Import…",
                          title: "Add the annotations of a GeoJSON file (e.g. from QuPath)",
                          "aria-label": "Import GeoJSON", onclick: () => importInput.click() }),
        importInput),
    );
    document.querySelector(".viewer-main").append(panel);
  }

  function togglePanel(force) {
    const show = force === undefined ? panel.classList.contains("hidden") : force;
    panel.classList.toggle("hidden", !show);
    const toggle = $("annotate-toggle");
    if (toggle) toggle.setAttribute("aria-pressed", String(show));
    if (!show && tool) setTool(tool);
    if (show) $("annotation-label").focus();
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target instanceof Element ? event.target : document.body;
    const typing = ["INPUT", "TEXTAREA"].includes(target.tagName);
    if (target.closest("#menu, #menu-toggle")) return; // the menu's own keys (Escape closes it)
    let handled = true;
    if (event.key === "Escape" && draft) cancel();
    else if (event.key === "Escape" && tool) setTool(tool);
    else if (typing) handled = false;
    else if (event.key === "Enter" && draft && !target.closest("button, a")) finish();
    else if (event.key === "a" || event.key === "A") togglePanel();
    else handled = false;
    if (handled) {
      event.preventDefault();
      event.stopPropagation(); // not also the viewer's key (Escape clears its ruler)
    }
  }

  function start() {
    viewer = OpenSeadragon.getViewer($("osd"));
    if (!viewer) return false;
    // Inside the viewer's canvas, above the image: the layer is where the slide is, whatever
    // the page's layout does with the viewer (side-by-side panes).
    viewer.canvas.append(node("svg", { id: "annotation-layer", class: "annotation-layer",
                                       "aria-hidden": "true" }));
    wireCanvas();
    load();
    return true;
  }

  function init() {
    if (typeof OpenSeadragon === "undefined" || !/^[0-9a-f]{32}$/.test(slideId)) return;
    buildPanel();
    const toggle = $("annotate-toggle");
    if (toggle) toggle.addEventListener("click", () => togglePanel());
    window.addEventListener("keydown", onKey, true); // before the viewer's own keys
    // The viewer opens the slide after its facts arrive: start then (viewer.js sets data-open).
    if (document.body.dataset.open === "true" && start()) return;
    const watch = new MutationObserver(() => {
      if (document.body.dataset.open === "true" && start()) watch.disconnect();
    });
    watch.observe(document.body, { attributes: true, attributeFilter: ["data-open"] });
  }

  init();
})();
