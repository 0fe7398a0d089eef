// Progressive enhancement only: every page works without it.
// "Select all on this page" for the dead-letter list.
document.addEventListener("DOMContentLoaded", function () {
  var all = document.getElementById("select-all");
  if (!all) return;
  all.hidden = false;
  all.addEventListener("change", function () {
    var boxes = document.querySelectorAll("input[name='id'][type='checkbox']");
    for (var i = 0; i < boxes.length; i++) boxes[i].checked = all.checked;
  });
});
