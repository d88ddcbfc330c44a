/* Which slide is which, in the viewer: the slide's labels (block, stain, scan date) in the
   title bar, a strip of the whole case's thumbnails in reading order that switches slides,
   and the macro overview (the photograph of the whole glass slide; for users with the label
   grant only) as a toggle. The case and its order come from /viewer/cases, the same list the
   worklist and next/previous use. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const slideId = location.pathname.split("/").pop();
  const HIDDEN_KEY = "tileserver.caseStrip.hidden"; // the user closed the strip (this tab)

  function labelText(labels) {
    return [
      labels.block ? `Block ${labels.block}` : "",
      labels.stain || "",
      labels.scan_date ? `scanned ${labels.scan_date}` : "",
    ].filter(Boolean).join(" · ");
  }

  /** In the title bar, short (the bar is full on mid-size screens); in full as its tooltip. */
  function showLabels(info) {
    const node = $("slide-labels");
    node.textContent = [info.block, info.stain, info.scan_date].filter(Boolean).join(" · ");
    node.title = labelText(info);
  }

  // -- the case strip ----------------------------------------------------------------------
  function stripItem(id, labels) {
    const current = id === slideId;
    const caption = [labels.block, labels.stain].filter(Boolean).join(" · ") || TS.shortId(id);
    const thumb = TS.el("img", {
      class: "strip-thumb",
      alt: "",
      decoding: "async",
      fetchpriority: "low", // after the slide's own tiles: the strip opens with the viewer
      src: `/api/slides/${id}/thumbnail?max=128`,
    });
    thumb.addEventListener("error", () => thumb.classList.add("broken"));
    return TS.el(
      "a",
      {
        class: "strip-item" + (current ? " current" : ""),
        href: `/view/${id}`,
        "aria-current": current ? "page" : null,
        title: [labelText(labels), id].filter(Boolean).join(" · "),
        dataset: { id },
      },
      thumb,
      TS.el("span", { class: "strip-caption", text: caption }),
    );
  }

  function putAway() {
    try {
      return sessionStorage.getItem(HIDDEN_KEY) === "1";
    } catch (_) {
      return false; // no storage: shown
    }
  }

  /** The thumbnails shown or put away; the strip's title button stays, to bring them back. */
  function setStripShown(shown) {
    $("case-strip").classList.toggle("collapsed", !shown);
    $("strip-toggle").setAttribute("aria-expanded", String(shown));
    try {
      if (shown) sessionStorage.removeItem(HIDDEN_KEY);
      else sessionStorage.setItem(HIDDEN_KEY, "1");
    } catch (_) { /* storage refused: the choice lasts for this page only */ }
  }

  function buildStrip(found) {
    const strip = $("case-strip");
    const count = found.slides.length;
    const toggle = TS.el(
      "button",
      {
        id: "strip-toggle",
        type: "button",
        class: "strip-toggle ghost",
        "aria-expanded": "true",
        "aria-controls": "case-strip",
        title: "Show or put away the case's thumbnails",
        onclick: () => setStripShown(strip.classList.contains("collapsed")),
      },
      TS.el("span", { class: "strip-title", text: found.name }),
      TS.el("span", { class: "strip-count", text: `${count} slide${count === 1 ? "" : "s"}` }),
    );
    strip.replaceChildren(
      toggle,
      ...found.slides.map((id) => stripItem(id, (found.labels || {})[id] || {})),
    );
    setStripShown(!putAway());
    const current = strip.querySelector(".strip-item.current");
    if (current) current.scrollIntoView({ block: "nearest", inline: "nearest" });
  }

  // -- the macro overview ------------------------------------------------------------------
  /** Offered only once the image has loaded: a caller without the label grant gets the 404
      of a missing image, and no button. */
  function offerMacro(info) {
    if (!(info.associated || []).includes("macro")) return;
    const img = $("macro-image");
    img.addEventListener("load", () => {
      const button = TS.el("button", {
        id: "macro-toggle",
        type: "button",
        class: "tool",
        "aria-pressed": "false",
        title: "Macro: the whole glass slide",
        text: "Macro",
        onclick: () => {
          const show = $("macro-panel").classList.contains("hidden");
          $("macro-panel").classList.toggle("hidden", !show);
          button.setAttribute("aria-pressed", String(show));
          button.classList.toggle("active", show);
        },
      });
      $("fit").after(button);
    }, { once: true });
    img.fetchPriority = "low"; // after the slide's own tiles
    img.src = `/api/slides/${slideId}/associated/macro`;
  }

  async function init() {
    // The strip's room is there from the first layout (viewer.html), so the slide is fitted
    // to its final area: it only goes if the slide turns out to be in no case.
    $("case-strip").classList.toggle("collapsed", putAway());
    $("macro-panel").addEventListener("click", () => {
      const button = $("macro-toggle");
      if (button) button.click();
    });
    const [info, cases] = await Promise.all([
      TS.slideInfo(slideId).catch(() => null), // the page's own copy (common.js)
      TS.cases().catch(() => null),
    ]);
    if (!info) { // viewer.js says why
      $("case-strip").classList.add("hidden");
      return;
    }
    showLabels(info);
    const found = ((cases && cases.cases) || []).find((c) => c.slides.includes(slideId));
    if (found && info.case) buildStrip(found); // not in "Unassigned": no case to show
    else $("case-strip").classList.add("hidden");
    offerMacro(info);
    document.body.dataset.caseStrip = "ready";
  }

  init();
})();
