/* The top bar's menu on narrow screens: a disclosure button (aria-expanded, aria-controls)
   that shows the tools the bar has no room for. Wide screens show them in the bar and hide
   the button (app.css decides which by width), so this only opens and closes. */
"use strict";

(() => {
  const toggle = document.getElementById("menu-toggle");
  const menu = toggle && document.getElementById(toggle.getAttribute("aria-controls"));
  if (!menu) return;

  /** The menu is a drop-down only while its button is shown; otherwise it is the bar. */
  function collapsed() {
    return toggle.offsetParent !== null;
  }

  function setOpen(open, focusButton = false) {
    toggle.setAttribute("aria-expanded", String(open));
    menu.classList.toggle("open", open);
    if (focusButton) toggle.focus();
  }

  // Tab goes on from the button into the open menu: it follows the button in the page.
  toggle.addEventListener("click", () => {
    setOpen(toggle.getAttribute("aria-expanded") !== "true");
  });

  // A tool chosen from the drop-down acts, and the drop-down gets out of the slide's way.
  menu.addEventListener("click", (event) => {
    if (collapsed() && event.target.closest("button")) setOpen(false, true);
  });

  // Escape closes it (and is not also the viewer's Escape: that would clear a measurement).
  for (const node of [toggle, menu]) {
    node.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && toggle.getAttribute("aria-expanded") === "true") {
        event.stopPropagation();
        event.preventDefault();
        setOpen(false, true);
      }
    });
  }

  // A press or focus anywhere else closes it.
  document.addEventListener("pointerdown", (event) => {
    if (!toggle.contains(event.target) && !menu.contains(event.target)) setOpen(false);
  });
  document.addEventListener("focusin", (event) => {
    if (!toggle.contains(event.target) && !menu.contains(event.target)) setOpen(false);
  });

  // Wider again: the tools are back in the bar, and the state must not linger.
  window.addEventListener("resize", () => {
    if (!collapsed()) setOpen(false);
  });
})();
