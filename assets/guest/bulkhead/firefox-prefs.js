// Bulkhead's default prefs for Firefox ESR in a partition (stage2 copies this to
// /etc/firefox-esr/bulkhead.js, which Debian's build reads as defaults; a user's
// about:config changes still win). The partition is the isolation boundary and has
// one or two vCPUs: one web content process plus the file:// process instead of
// Fission's dozen, nothing launched ahead of need, no background network chatter.
// Measured in a chroot (fresh profile, local page): 12 -> 4 processes, 6.6 -> 4.0 s CPU.
pref("fission.autostart", false);
pref("dom.ipc.processCount", 1);
pref("dom.ipc.processCount.webIsolated", 1);
pref("dom.ipc.processPrelaunch.enabled", false);
pref("dom.ipc.keepProcessesAlive.web", 0);
pref("browser.tabs.remote.separatePrivilegedContentProcess", false);
pref("browser.tabs.remote.separatePrivilegedMozillaWebContentProcess", false);
pref("extensions.webextensions.remote", false);
pref("network.process.enabled", false);
pref("media.rdd-process.enabled", false);
pref("browser.newtab.preload", false);
pref("browser.startup.preXulSkeletonUI", false);
pref("browser.startup.homepage_override.mstone", "ignore");
pref("extensions.pocket.enabled", false);
pref("extensions.getAddons.cache.enabled", false);
pref("extensions.update.enabled", false);
pref("app.normandy.enabled", false);
pref("browser.safebrowsing.malware.enabled", false);
pref("browser.safebrowsing.phishing.enabled", false);
pref("browser.safebrowsing.downloads.enabled", false);
pref("browser.safebrowsing.update.enabled", false);
pref("network.captive-portal-service.enabled", false);
pref("network.connectivity-service.enabled", false);
pref("toolkit.telemetry.enabled", false);
pref("datareporting.healthreport.uploadEnabled", false);
// Every partition stop ends Firefox uncleanly; after three such starts it would open
// with the "Troubleshoot Mode?" dialog instead of the page.
pref("toolkit.startup.max_resumed_crashes", -1);
