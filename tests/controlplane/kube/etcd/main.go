// Command etcd is etcd's own server entry point (go.etcd.io/etcd/server/v3/etcdmain), built
// at the version k8s.io/kubernetes pins, so kube-apiserver runs against the etcd it is tested with.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
