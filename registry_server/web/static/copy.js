// "Copy" buttons beside the snippets; without JavaScript the snippets are plain selectable text.
(function () {
  "use strict";
  document.querySelectorAll("[data-copy]").forEach(function (block) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy " + (block.getAttribute("data-copy") || "snippet"));
    button.addEventListener("click", function () {
      var text = block.querySelector("code").textContent;
      navigator.clipboard.writeText(text).then(function () {
        button.textContent = "Copied";
        window.setTimeout(function () { button.textContent = "Copy"; }, 1500);
      });
    });
    block.appendChild(button);
  });
})();
