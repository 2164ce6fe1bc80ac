// Command demo is snapboot's main job: it boots a slow Rails app that talks
// to PostgreSQL cold, checkpoints it with `snapboot checkpoint`, restores it
// through containerd with the snapboot runtime from the registry (empty
// cache, then warm cache), and prints the table. With -runs N it repeats
// every measurement, adds the floor (a bare runc restore of the same CRIU
// images from local disk) and writes bench/results.json, .md and .png (a
// chart drawn with gonum/plot).
//
// It stands up everything it needs on this machine (a private containerd,
// a registry and a PostgreSQL on 127.0.0.1) and stops all of it by PID.
package main
