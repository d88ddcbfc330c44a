/* Shared by every page: fetch with the session cookie, 401 -> login and back, small DOM helpers. */
"use strict";

const TS = (() => {
  /** Only same-site paths are followed after login (no open redirect): the rules of the
   *  server's safe_next (server/routes/auth.py). Printable ASCII without space or backslash
   *  (browsers drop tabs and newlines and read "\\" as "/"), one leading "/", and a path that,
   *  percent-decoded again and again, never holds "//", a dot segment, a control or a
   *  non-ASCII character. */
  function safeNext(value) {
    const plain = /^[!-[\]-~]*$/;
    if (typeof value !== "string" || value.length > 2048 || !plain.test(value)) return "/";
    let path = value.split(/[?#]/)[0];
    for (let round = 0; round < 4; round++) {
      if (!path.startsWith("/") || !plain.test(path) || path.includes("//") ||
          /(^|\/)\.{1,2}(\/|$)/.test(path)) {
        return "/";
      }
      let decoded;
      try {
        decoded = decodeURIComponent(path);
      } catch (_) {
        return "/"; // malformed escapes
      }
      if (decoded === path) {
        // And as the browser will resolve it: this origin, or home.
        return new URL(value, location.href).origin === location.origin ? value : "/";
      }
      path = decoded;
    }
    return "/";
  }

  function loginUrl() {
    return "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }

  let leaving = false;
  /** The session is gone: to the login page, which brings the user back here. */
  function toLogin() {
    if (!leaving) {
      leaving = true;
      location.assign(loginUrl());
    }
  }

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const response = await fetch(path, {
      credentials: "same-origin",
      ...options,
      headers: { Accept: "application/json", ...(options.headers || {}) },
    });
    if (response.status === 401 && !path.startsWith("/auth/login")) {
      toLogin();
      throw new HttpError(401, "session expired");
    }
    return response;
  }

  async function json(path) {
    const response = await api(path);
    if (!response.ok) {
      let message = response.statusText;
      try {
        message = (await response.json()).error || message;
      } catch (_) { /* not JSON */ }
      throw new HttpError(response.status, message);
    }
    return response.json();
  }

  async function post(path, body) {
    return fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
  }

  async function logout() {
    try {
      await post("/auth/logout", {});
    } finally {
      location.assign("/login");
    }
  }

  /** Still signed in? Used after a tile fails, since image loads do not show the status. */
  async function checkSession() {
    try {
      const response = await fetch("/auth/me", { credentials: "same-origin",
                                                 headers: { Accept: "application/json" } });
      if (response.status === 401) toLogin();
      return response.ok;
    } catch (_) {
      return false;
    }
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** A length in micrometres as clinicians read it: µm below 1 mm, mm above. */
  function formatLength(um) {
    if (!isFinite(um)) return "—";
    if (um >= 1000) {
      const mm = um / 1000;
      return (mm >= 10 ? mm.toFixed(1) : mm.toFixed(2)).replace(/\.?0+$/, "") + " mm";
    }
    if (um >= 100) return Math.round(um) + " µm";
    if (um >= 10) return um.toFixed(1).replace(/\.0$/, "") + " µm";
    return um.toFixed(2).replace(/\.?0+$/, "") + " µm";
  }

  /** An integer with thousands separators, as the page's English text writes it. Not
   *  toLocaleString: its first call loads the locale data, 30-40 ms of the main thread while
   *  the first view draws. */
  function formatCount(n) {
    return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  function shortId(id) {
    return id.slice(0, 8);
  }

  /** The signed-in user's name into #user-name, and the logout button wired. */
  async function header() {
    const button = document.getElementById("logout");
    if (button) button.addEventListener("click", logout);
    try {
      const me = await json("/auth/me");
      const name = document.getElementById("user-name");
      if (name) name.textContent = me.name;
      return me;
    } catch (_) {
      return null;
    }
  }

  /** The query every tile of a slide asks with: ``?icc=embed`` when the slide has an ICC
   *  profile the server can use and that is not sRGB in all but bytes, so stored tiles still
   *  pass through (the profile spliced in) and the browser shows the scanner's colours; ""
   *  for the others (docs/colour.md). */
  function tileQuery(info) {
    const icc = info && info.icc_profile;
    return icc && icc.usable && !icc.srgb_equivalent ? "?icc=embed" : "";
  }

  /** The tile at ``url`` as a decoded image (a Promise). An image, not fetch() and
   *  createImageBitmap: no trip through the browser's blob store, which on a busy machine held
   *  each tile 50-90 ms between its arrival and its pixels (docs/viewer.md); and an image is
   *  colour-managed through the ICC profile it carries (icc=embed), where OpenSeadragon's own
   *  blob decoder ignores profiles. ``signal`` aborting drops the image's source (Chromium
   *  cancels the request) and rejects, as an aborted fetch() does: Chromium leaves the
   *  image's decode() pending when its source goes. */
  function loadTile(url, signal) {
    const image = new Image();
    image.fetchPriority = "high"; // as a fetch(): an image outside the page starts low
    return new Promise((resolve, reject) => {
      const cancel = () => {
        image.removeAttribute("src");
        reject(new DOMException("the tile's load was cancelled", "AbortError"));
      };
      if (signal) signal.addEventListener("abort", cancel, { once: true });
      image.src = url;
      // Once settled, a late abort must not blank an image already handed on.
      image.decode().then(() => resolve(image), reject)
        .finally(() => signal && signal.removeEventListener("abort", cancel));
    });
  }

  /** The DZI descriptor ``text`` of ``slideId`` as the object form OpenSeadragon takes (it
   *  then does not fetch the descriptor again), its tiles asked for with ``query``; null when
   *  it is not a usable DZI. */
  function dziSource(text, slideId, query = "") {
    if (!text) return null;
    const image = new DOMParser().parseFromString(text, "application/xml").documentElement;
    const size = image.getElementsByTagName("Size")[0];
    if (!image || image.localName !== "Image" || !size) return null;
    return {
      Image: {
        xmlns: image.namespaceURI,
        Url: `/deepzoom/${slideId}_files/`,
        Format: image.getAttribute("Format"),
        Overlap: image.getAttribute("Overlap"),
        TileSize: image.getAttribute("TileSize"),
        Size: { Width: size.getAttribute("Width"), Height: size.getAttribute("Height") },
      },
      queryParams: query,
    };
  }

  let inline; // undefined: not read yet
  /** The facts and DZI descriptor the viewer page carries (server/routes/viewer.py), as
   *  ``{info, dzi}``, or null when the page has none (the caller may not read them: ask the
   *  API, which says why). Read once. */
  function slideData() {
    if (inline === undefined) {
      const node = document.getElementById("slide-data");
      try {
        inline = node ? JSON.parse(node.textContent) : null;
      } catch (_) {
        inline = null;
      }
    }
    return inline;
  }

  const once = new Map();
  /** ``json(path)`` shared by every script of the page: one request, one answer. */
  function shared(path) {
    if (!once.has(path)) once.set(path, json(path));
    return once.get(path);
  }

  /** ``/api/slides/ID``'s body: from the page if it carries it, else one shared request. */
  function slideInfo(slideId) {
    const data = slideData();
    if (data && data.info && data.info.id === slideId) return Promise.resolve(data.info);
    return shared(`/api/slides/${slideId}`);
  }

  /** The caller's cases in worklist order (``/viewer/cases``), one request for the page. */
  function cases() {
    return shared("/viewer/cases");
  }

  /** OpenSeadragon adds a small <style> for touch screens unless one marked
   *  data-openseadragon-mobile-css exists; the CSP refuses inline styles (even empty ones), so
   *  its rule lives in app.css and the marker is a "style" element outside the HTML and SVG
   *  namespaces: the selector matches it, and no browser treats it as a style sheet. */
  function markOsdMobileCss() {
    const marker = document.createElementNS("urn:x-tileserver:inert", "style");
    marker.setAttribute("data-openseadragon-mobile-css", "true");
    document.head.append(marker);
  }

  /** OpenSeadragon's options for every slide view (the viewer, its side-by-side panes, a
   *  signed link's page), ``options`` added or overriding: one look (the overview map top
   *  right, in the page's colours), one loading policy (benchmarks/bench_viewer.py; the why:
   *  docs/viewer.md), one mouse behaviour. */
  function viewerOptions(options) {
    return {
      prefixUrl: "/static/vendor/openseadragon/images/",
      drawer: "canvas",
      showNavigationControl: false,
      showNavigator: true,
      navigatorPosition: "TOP_RIGHT",
      navigatorAutoFade: false,
      navigatorBackground: "#1b1f24",
      navigatorBorderColor: "#3a4048",
      navigatorDisplayRegionColor: "#4fb3ff",
      maxTilesPerFrame: 8, // 1 by default: one tile started per animation frame
      immediateRender: true, // the displayed level first, not every coarser level on the way
      // A level is fetched once drawn at >= 0.51 screen px per pixel (OpenSeadragon: 0.5), so a
      // preset on a pyramid level (1:1) does not also fetch the next finer level (0.5:1).
      minPixelRatio: 0.51,
      preserveImageSizeOnResize: true,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true, flickEnabled: false },
      ...options,
    };
  }

  return { safeNext, loginUrl, toLogin, api, json, post, logout, checkSession, el,
           formatLength, formatCount, shortId, header, viewerOptions, dziSource, tileQuery,
           loadTile, markOsdMobileCss, slideData, slideInfo, cases, HttpError };
})();
